-- sms.list_keys(): the API keys the caller may manage (sms.caller_tenants: every key for SQL
-- users, for the service those whose tenants its admin key names), oldest first, without hashes.
CREATE OR REPLACE FUNCTION sms.list_keys() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(to_jsonb(k) - 'secret_hash' ORDER BY k.created_at, k.key_id), '[]')
      INTO v_keys
      FROM sms.api_keys k, LATERAL (SELECT sms.caller_tenants() AS allowed) c
     WHERE c.allowed IS NULL OR k.tenants <@ c.allowed;
    RETURN v_keys;
END;
$$;
REVOKE ALL ON FUNCTION sms.list_keys() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.list_keys() TO sms_api;
