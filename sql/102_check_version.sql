-- sms.check_version(tenant, fsa, version): raises SM010 (not found) unless the state's history
-- holds that version: 0 up to the current version, and not before a baseline snapshot (history
-- is kept from the version a state had when history keeping was installed); SM015 (history
-- compacted) for a version before the point its log was compacted at (sms.log_start).
CREATE OR REPLACE FUNCTION sms.check_version(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_current  bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    v_baseline bigint := (SELECT max(version) FROM sms.snapshots
                           WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND baseline);
    v_start    bigint;  -- where the kept log starts: looked up only for a version before the current one
BEGIN
    IF p_version IS NULL OR p_version < 0 OR p_version > v_current THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('version %s does not exist: the state is at version %s', p_version, v_current),
            DETAIL = jsonb_build_object('current_version', v_current)::text;
    END IF;
    IF p_version < v_current THEN
        v_start := sms.log_start(p_tenant_id, p_fsa_id);
    END IF;
    IF p_version < v_start THEN
        RAISE EXCEPTION USING ERRCODE = 'SM015',
            MESSAGE = format('version %s was compacted away: the history of this state starts at version %s',
                             p_version, v_start),
            DETAIL = jsonb_build_object('current_version', v_current, 'history_from', v_start)::text;
    END IF;
    IF p_version < v_baseline THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('version %s is older than the kept history, which starts at version %s',
                             p_version, v_baseline),
            DETAIL = jsonb_build_object('current_version', v_current, 'history_from', v_baseline)::text;
    END IF;
END;
$$;
