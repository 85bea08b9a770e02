-- sms.request_tenants(): the tenants the current transaction acts for, as set by sms.act_for;
-- NULL when it acts for none. Every tenant table's row-level security policy compares tenant_id
-- with it (sql/180_tenant_isolation.sql), so for any role but the tables' owner NULL means no row.
CREATE OR REPLACE FUNCTION sms.request_tenants() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('sms.tenants', true), '')::text[];
$$;
