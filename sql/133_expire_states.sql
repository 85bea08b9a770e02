-- sms.expire_states(limit): one sweep of the TTLs in one transaction, for SQL users on one server
-- (cron): expires (sms.expire_state) up to `limit` of the states sms.expired_states lists, and
-- returns their erasure records. On Citus it runs on the coordinator, not on the tenants' nodes,
-- and so refuses to erase (sms.check_tenant_here): there each state is expired by a bare call of
-- sms.expire_state, as the service's sweeper does.
CREATE OR REPLACE FUNCTION sms.expire_states(p_limit integer) RETURNS SETOF sms.erasures
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_state   record;
    v_erasure jsonb;
BEGIN
    FOR v_state IN SELECT * FROM sms.expired_states(p_limit) LOOP
        v_erasure := sms.expire_state(v_state.tenant_id, v_state.fsa_id);
        CONTINUE WHEN v_erasure IS NULL;
        RETURN NEXT jsonb_populate_record(NULL::sms.erasures, v_erasure);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION sms.expire_states(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expire_states(integer) TO sms_api;
