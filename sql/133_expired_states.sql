-- sms.expired_states(limit): up to `limit` states, of every tenant, that have gone `expires_after`
-- without a delta, in id order: what a sweep of the TTLs expires, each by sms.expire_state. It only
-- reads (on Citus, every node's shards from the coordinator); the service's role, which sees no
-- tenant's rows when it acts for none, lists them through it.
CREATE OR REPLACE FUNCTION sms.expired_states(p_limit integer) RETURNS TABLE (tenant_id text, fsa_id text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'a sweep expires 1 to 10000 states';
    END IF;
    RETURN QUERY
        SELECT s.tenant_id, s.fsa_id FROM sms.states s
         WHERE s.expires_after IS NOT NULL AND s.updated_at + s.expires_after <= now()
         ORDER BY s.tenant_id, s.fsa_id
         LIMIT p_limit;
END;
$$;
REVOKE ALL ON FUNCTION sms.expired_states(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expired_states(integer) TO sms_api;
