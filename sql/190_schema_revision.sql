-- sms.schema_revision(): the alembic revision the database is migrated to (public.alembic_version).
-- The service's readiness check compares it with the newest revision the service ships (GET
-- /health/ready); the service's role may not read alembic's table, so this reads it as the owner.
-- PL/pgSQL: the table is alembic's, made by the first migration, not by sql/.
CREATE OR REPLACE FUNCTION sms.schema_revision() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (SELECT version_num FROM public.alembic_version LIMIT 1);
END;
$$;
REVOKE ALL ON FUNCTION sms.schema_revision() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.schema_revision() TO sms_api;
