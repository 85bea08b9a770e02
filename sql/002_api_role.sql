-- Role sms_api: the role the HTTP service's queries run as (DESIGN §10, the second wall). It is
-- no superuser, cannot bypass row-level security and owns nothing, so every tenant table's policy
-- (sql/180_tenant_isolation.sql) binds it: a transaction sees and writes only the rows of the
-- tenants it acts for (sms.act_for). Roles belong to the whole cluster, so it is created once and
-- shared by every database of the cluster. It may log in but has no password: trust or peer
-- authentication (the embedded server's) lets the service in; elsewhere an operator gives it one
-- and names it in SMS_API_DATABASE_URL.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sms_api') THEN
        CREATE ROLE sms_api LOGIN NOSUPERUSER NOINHERIT NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- another database's migration created it at the same moment
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = 'the migration needs the role sms_api and may not create it',
            HINT = 'ask a superuser to run: CREATE ROLE sms_api LOGIN PASSWORD ''…'' (or grant CREATEROLE)';
END;
$$;
GRANT USAGE ON SCHEMA sms TO sms_api;
