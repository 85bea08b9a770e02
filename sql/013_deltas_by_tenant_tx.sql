-- Index for the tenant-wide change feed: a tenant's deltas in transaction order.
CREATE INDEX deltas_by_tenant_tx ON sms.deltas (tenant_id, tx_id, fsa_id, version);
