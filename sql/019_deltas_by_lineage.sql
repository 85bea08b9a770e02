-- Index for lineage reports: a lineage's deltas across a tenant's states, in time order.
CREATE INDEX deltas_by_lineage ON sms.deltas (tenant_id, lineage_id, created_at) WHERE lineage_id IS NOT NULL;
