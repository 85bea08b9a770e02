-- sms.read_slice_counted(...): sms.read_slice on the primary: a read answered from the cache also
-- counts its hit and remembers the collections' versions it was found valid at — without ever
-- waiting: a row another reader is bumping just then is skipped. One function, so that the
-- statement that calls it reads no table itself: a sharded database (Citus) runs a statement on a
-- tenant's node whole, and a function read there cannot read the tables in turn.
CREATE OR REPLACE FUNCTION sms.read_slice_counted(p_tenant_id text, p_fsa_id text, p_spec text,
                                                  p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                                  p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_read jsonb := sms.read_slice(p_tenant_id, p_fsa_id, p_spec, p_k, p_order, p_where, p_options);
BEGIN
    IF (v_read ->> 'cached')::boolean THEN
        UPDATE sms.summary_cache c SET hits = c.hits + 1, last_used_at = now(), coarse = v_read ->> 'coarse'
         WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
           AND c.ctid = (SELECT s.ctid FROM sms.summary_cache s
                          WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id AND s.cache_key = v_read ->> 'cache_key'
                            FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN v_read;
END;
$$;
