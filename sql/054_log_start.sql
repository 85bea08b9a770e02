-- sms.log_start(tenant, fsa): the version the state's kept log starts after: 0 while the log is
-- whole, the compaction point after sms.compact (the deltas up to it are gone, and the snapshot
-- taken there holds the state at it). Time travel and replay reach back to it and no further.
-- One probe of the log's primary key.
CREATE OR REPLACE FUNCTION sms.log_start(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce((SELECT min(version) - 1 FROM sms.deltas WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id),
                    sms.current_version(p_tenant_id, p_fsa_id));
END;
$$;
