-- sms.authenticate(secret_hash): the API key with this SHA-256 (as sms.list_keys shows keys, with
-- its revocation and expiry for the caller to judge), or NULL when there is none.
CREATE OR REPLACE FUNCTION sms.authenticate(p_secret_hash bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key jsonb;
BEGIN
    SELECT to_jsonb(k) - 'secret_hash' || jsonb_build_object('expired', k.expires_at <= now())
      INTO v_key
      FROM sms.api_keys k WHERE k.secret_hash = p_secret_hash;
    RETURN v_key;
END;
$$;
REVOKE ALL ON FUNCTION sms.authenticate(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.authenticate(bytea) TO sms_api;
