-- sms.expire_state(tenant, fsa): purges the state (sms.erase_state, actor 'ttl') if it has gone
-- `expires_after` without a delta, checked under its lock, so that a delta that came meanwhile
-- keeps it. Returns the erasure's record, or NULL when the state is not (or no longer) past its
-- TTL. One state of one tenant, so that Citus runs a bare call of it on the tenant's node: the
-- service's sweeper makes one for each state sms.expired_states lists, each its own transaction.
CREATE OR REPLACE FUNCTION sms.expire_state(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    IF NOT EXISTS (SELECT FROM sms.states s
                    WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id
                      AND s.updated_at + s.expires_after <= now()) THEN
        RETURN NULL;
    END IF;
    RETURN to_jsonb(sms.erase_state(p_tenant_id, p_fsa_id, 'ttl', NULL));
END;
$$;
REVOKE ALL ON FUNCTION sms.expire_state(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expire_state(text, text) TO sms_api;
