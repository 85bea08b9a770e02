-- sms.purge_state(tenant, fsa, actor, key_id): erases a state — its entries, log, history,
-- snapshots, comments, summary cache, aliases, policies, refusals: every row of it in every table
-- (sms.erase_state) — when a person asks (DESIGN §14), and records who did it and when in
-- sms.erasures, which keeps that record. The state then reads as never written (version 0); its
-- feed subscribers are told. `actor` and `key_id` say who asked (the service passes the request's
-- actor and API key). The service may purge only states of the tenants its transaction acts for
-- (sms.caller_tenants; SM010 for any other, as for anything not there). Returns the record.
CREATE OR REPLACE FUNCTION sms.purge_state(p_tenant_id text, p_fsa_id text, p_actor text, p_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('key_id', p_key_id);
    IF v_allowed IS NOT NULL AND NOT p_tenant_id = ANY (v_allowed) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no state %s/%s', p_tenant_id, p_fsa_id);
    END IF;
    RETURN to_jsonb(sms.erase_state(p_tenant_id, p_fsa_id, p_actor, p_key_id));
END;
$$;
REVOKE ALL ON FUNCTION sms.purge_state(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.purge_state(text, text, text, text) TO sms_api;
