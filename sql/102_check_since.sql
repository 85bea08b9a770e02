-- sms.check_since(tenant, fsa, since): raises SM015 (history compacted) when a reader of the log
-- asks for the deltas after a version that a compaction dropped (0 < since < sms.log_start), as
-- it would miss some without knowing; true otherwise (so that a statement's WHERE can require it).
-- Reading after 0 reads the whole kept log, which after a compaction starts after its snapshot
-- (sms.document_at at sms.log_start is the state there).
CREATE OR REPLACE FUNCTION sms.check_since(p_tenant_id text, p_fsa_id text, p_since bigint) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_start bigint;
BEGIN
    IF p_since > 0 THEN
        v_start := sms.log_start(p_tenant_id, p_fsa_id);
        IF p_since < v_start THEN
            RAISE EXCEPTION USING ERRCODE = 'SM015',
                MESSAGE = format('the deltas after version %s were compacted away: the log of this state starts '
                                 'after version %s', p_since, v_start),
                DETAIL = jsonb_build_object('history_from', v_start)::text;
        END IF;
    END IF;
    RETURN true;
END;
$$;
