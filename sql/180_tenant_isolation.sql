-- Tenant isolation, the second wall (DESIGN §10): row-level security on every table, and on
-- every table that holds tenant data a policy that lets a transaction see and write only the rows
-- of the tenants it acts for (sms.request_tenants, set by sms.act_for from the request's API key).
-- Policies bind every role but the tables' owner: the service's role sms_api, which gets here only
-- the privileges the service needs; SQL users working as the owner see everything. The API keys
-- and the rate buckets have no policy: only the owner and the functions that run as it touch them.
-- (The tenants are read once per statement: `(SELECT …)` makes it an init plan, not a per-row call.)

ALTER TABLE sms.states ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.states USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.states TO sms_api;

ALTER TABLE sms.entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.entries USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.entries TO sms_api;

ALTER TABLE sms.deltas ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.deltas USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.deltas TO sms_api;

ALTER TABLE sms.feed ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.feed USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.feed TO sms_api;

ALTER TABLE sms.feed_clocks ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.feed_clocks USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.feed_clocks TO sms_api;

ALTER TABLE sms.entry_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.entry_history USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.entry_history TO sms_api;

ALTER TABLE sms.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.snapshots USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.snapshots TO sms_api;

ALTER TABLE sms.snapshot_entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.snapshot_entries USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.snapshot_entries TO sms_api;

ALTER TABLE sms.task_comments ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.task_comments USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.task_comments TO sms_api;

ALTER TABLE sms.member_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.member_counts USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.member_counts TO sms_api;

ALTER TABLE sms.slice_aliases ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.slice_aliases USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.slice_aliases TO sms_api;

ALTER TABLE sms.summary_cache ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.summary_cache USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.summary_cache TO sms_api;

ALTER TABLE sms.policies ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.policies USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, DELETE ON sms.policies TO sms_api;

ALTER TABLE sms.policy_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.policy_changes USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.policy_changes TO sms_api;

ALTER TABLE sms.refusals ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.refusals USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.refusals TO sms_api;

-- the erasure records: written only by the owner's functions (sms.erase_state, sms.compact)
ALTER TABLE sms.erasures ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.erasures USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT ON sms.erasures TO sms_api;

ALTER TABLE sms.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE sms.rate_buckets ENABLE ROW LEVEL SECURITY;
