-- sms.keys_exist(): whether any API key was ever made (revoked ones count). Until one is, the
-- service runs in protected mode (loopback clients only); from then on every request needs a key.
CREATE OR REPLACE FUNCTION sms.keys_exist() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT FROM sms.api_keys);
END;
$$;
REVOKE ALL ON FUNCTION sms.keys_exist() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.keys_exist() TO sms_api;
