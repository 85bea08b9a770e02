-- sms.expiry_of(tenant, fsa): a state's TTL as {"tenant_id", "fsa_id", "expires_after_seconds",
-- "last_write_at", "expires_at"}: how long it may go without a delta before the sweep purges it
-- (sms.expire_states), when its last delta came, and so when it expires (nulls: no TTL, or no
-- delta yet).
CREATE OR REPLACE FUNCTION sms.expiry_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_state sms.states;
BEGIN
    SELECT * INTO v_state FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    RETURN jsonb_build_object(
        'tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
        'expires_after_seconds', round(extract(epoch FROM v_state.expires_after))::bigint,
        'last_write_at', CASE WHEN v_state.version > 0 THEN v_state.updated_at END,
        'expires_at', v_state.updated_at + v_state.expires_after);
END;
$$;
