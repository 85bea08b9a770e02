-- sms.set_expiry(tenant, fsa, expires_after): sets the state's TTL — the sweep purges it once it
-- has gone that long without a delta (sms.expire_states) — or, with NULL, clears it; from 1
-- second to 999999 weeks (22023 otherwise). A state never written gets its header row, so that it
-- expires too if nobody writes it. Setting a TTL is no delta: it does not count as activity.
-- Takes the state's fence (sms.state_fence), so that a purge under way is never passed.
-- Returns sms.expiry_of.
CREATE OR REPLACE FUNCTION sms.set_expiry(p_tenant_id text, p_fsa_id text, p_expires_after interval)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    IF p_expires_after IS NULL THEN
        UPDATE sms.states SET expires_after = NULL WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    ELSIF p_expires_after < interval '1 second' OR p_expires_after > interval '999999 weeks' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'expires_after is from 1 second to 999999 weeks';
    ELSE
        INSERT INTO sms.states AS s (tenant_id, fsa_id, expires_after)
        VALUES (p_tenant_id, p_fsa_id, p_expires_after)
        ON CONFLICT (tenant_id, fsa_id) DO UPDATE SET expires_after = EXCLUDED.expires_after;
    END IF;
    RETURN sms.expiry_of(p_tenant_id, p_fsa_id);
END;
$$;
