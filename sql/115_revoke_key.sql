-- sms.revoke_key(key_id): revokes an API key from now on and returns it; SM010 (not found) when
-- there is no such key among those the caller may manage. Revoking twice keeps the first time.
CREATE OR REPLACE FUNCTION sms.revoke_key(p_key_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_key     sms.api_keys;
    v_now     timestamptz := now();  -- a value: Citus refuses now() inside coalesce in an UPDATE
BEGIN
    UPDATE sms.api_keys SET revoked_at = coalesce(revoked_at, v_now)
     WHERE key_id = p_key_id AND (v_allowed IS NULL OR tenants <@ v_allowed)
    RETURNING * INTO v_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no API key %s', left(p_key_id, 60));
    END IF;
    RETURN to_jsonb(v_key) - 'secret_hash';
END;
$$;
REVOKE ALL ON FUNCTION sms.revoke_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.revoke_key(text) TO sms_api;
