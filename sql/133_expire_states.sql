-- sms.expire_states(limit): one sweep of the TTLs: purges (sms.erase_state, actor 'ttl') up to
-- `limit` states that have gone `expires_after` without a delta, and returns their erasure
-- records. Each is checked again under its lock, so a delta that came meanwhile keeps its state.
-- The service sweeps every SMS_EXPIRY_SWEEP_SECONDS; SQL users may call it too. States are taken
-- in id order, so that concurrent sweeps lock them in the same order.
CREATE OR REPLACE FUNCTION sms.expire_states(p_limit integer) RETURNS SETOF sms.erasures
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_state record;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'a sweep expires 1 to 10000 states';
    END IF;
    FOR v_state IN
        SELECT s.tenant_id, s.fsa_id FROM sms.states s
         WHERE s.expires_after IS NOT NULL AND s.updated_at + s.expires_after <= now()
         ORDER BY s.tenant_id, s.fsa_id
         LIMIT p_limit
    LOOP
        PERFORM sms.state_lock(v_state.tenant_id, v_state.fsa_id);
        CONTINUE WHEN NOT EXISTS (SELECT FROM sms.states s
                                   WHERE s.tenant_id = v_state.tenant_id AND s.fsa_id = v_state.fsa_id
                                     AND s.updated_at + s.expires_after <= now());
        RETURN NEXT sms.erase_state(v_state.tenant_id, v_state.fsa_id, 'ttl', NULL);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION sms.expire_states(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expire_states(integer) TO sms_api;
