-- sms.feed_after(tenant, fsa, after_tx, after_fsa, after_version, limit): the deltas of a
-- tenant (or of one state when fsa is given) after a position, oldest first, for subscribers.
-- For one state, versions are assigned under the state's lock, so they commit in order and
-- `version > after_version` never skips one. Across a tenant's states, rows are read in
-- (tx_id, fsa_id, version) order and only below the oldest transaction still running, so a
-- slower transaction that commits later can never be passed over. NOTIFY only wakes readers;
-- this is what they read.
CREATE OR REPLACE FUNCTION sms.feed_after(p_tenant_id text, p_fsa_id text, p_after_tx xid8, p_after_fsa text,
                                          p_after_version bigint, p_limit integer)
RETURNS SETOF sms.deltas
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT * FROM (
        SELECT d.* FROM sms.deltas d
         WHERE p_fsa_id IS NOT NULL
           AND d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_after_version
         ORDER BY d.version
         LIMIT p_limit
    ) one_state
    UNION ALL
    SELECT * FROM (
        SELECT d.* FROM sms.deltas d
         WHERE p_fsa_id IS NULL
           AND d.tenant_id = p_tenant_id
           AND (d.tx_id, d.fsa_id, d.version) > (p_after_tx, p_after_fsa, p_after_version)
           AND d.tx_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY d.tx_id, d.fsa_id, d.version
         LIMIT p_limit
    ) whole_tenant;
$$;
