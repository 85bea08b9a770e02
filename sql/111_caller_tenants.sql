-- sms.caller_tenants(): whose keys the caller may manage. NULL (every tenant's) for the owner of
-- the schema's tables and superusers — SQL users and the `sms keys` command; for any other role
-- (the service) the tenants its transaction acts for (sms.act_for), or none.
CREATE OR REPLACE FUNCTION sms.caller_tenants() RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE WHEN pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = 'sms.api_keys'::regclass),
                                 'USAGE')
                THEN NULL ELSE coalesce(sms.request_tenants(), '{}') END;
END;
$$;
