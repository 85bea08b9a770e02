-- sms.create_key(key_id, secret_hash, tenants, scopes, ...): records a new API key — its public id
-- and the SHA-256 of the key, which the caller made and shows once (the key itself never reaches
-- the database) — and returns it as sms.list_keys shows keys. Scopes are read, write and admin.
-- The service may only make keys for tenants its admin key names (sms.caller_tenants); SM013
-- otherwise. Raises SM012 for an invalid key.
CREATE OR REPLACE FUNCTION sms.create_key(p_key_id text, p_secret_hash bytea, p_tenants text[], p_scopes text[],
                                          p_actor text DEFAULT NULL, p_aml_level integer DEFAULT NULL,
                                          p_expires_at timestamptz DEFAULT NULL,
                                          p_rate_limit double precision DEFAULT NULL, p_label text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_key     sms.api_keys;
    -- apart from the INSERT, which Citus takes with plain values only (api_keys is a reference table there)
    v_tenants text[] := ARRAY(SELECT DISTINCT t FROM unnest(p_tenants) t ORDER BY t);
    v_scopes  text[] := ARRAY(SELECT s FROM unnest(ARRAY['read', 'write', 'admin']) s WHERE s = ANY (p_scopes));
BEGIN
    IF p_key_id !~ '^k_[A-Za-z0-9]{8,40}$' OR octet_length(p_secret_hash) <> 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a key needs an id k_… and the SHA-256 of its secret';
    END IF;
    IF coalesce(cardinality(p_tenants), 0) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a key names 1 to 100 tenants';
    END IF;
    PERFORM sms.check_id('tenant_id', coalesce(t, '')) FROM unnest(p_tenants) t;
    PERFORM sms.check_id('actor', p_actor), sms.check_id('label', p_label);
    IF coalesce(cardinality(p_scopes), 0) = 0 OR NOT p_scopes <@ ARRAY['read', 'write', 'admin'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'scopes are one or more of read, write, admin';
    END IF;
    IF p_aml_level NOT BETWEEN 0 AND 100 OR p_rate_limit <= 0 OR p_rate_limit > 1e6 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = 'an AML level is 0 to 100, a rate limit above 0 and at most 1,000,000 requests per second';
    END IF;
    IF v_allowed IS NOT NULL AND NOT p_tenants <@ v_allowed THEN
        RAISE EXCEPTION USING ERRCODE = 'SM013',
            MESSAGE = 'a key may only be made for tenants of the key that makes it';
    END IF;
    INSERT INTO sms.api_keys (key_id, secret_hash, tenants, scopes, actor, aml_level, rate_limit, label, expires_at)
    VALUES (p_key_id, p_secret_hash, v_tenants, v_scopes, p_actor, p_aml_level, p_rate_limit, p_label, p_expires_at)
    RETURNING * INTO v_key;
    RETURN to_jsonb(v_key) - 'secret_hash';
END;
$$;
REVOKE ALL ON FUNCTION sms.create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision,
                                         text) TO sms_api;
