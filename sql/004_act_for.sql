-- sms.act_for(tenants): makes the current transaction act for these tenants (sms.request_tenants)
-- and returns true. The service's statements start from it — `SELECT … FROM sms.act_for($n)`, or
-- a LATERAL subquery that waits for it — so the setting is in place, for that statement's
-- transaction only, before anything reads a table; the tenants come from the request's API key,
-- never from the ids the statement names. NULL acts for no tenant.
-- A SET LOCAL rather than set_config(): the same on one server, and on Citus the command that
-- citus.propagate_set_commands = 'local' carries to the workers the transaction reaches, where
-- row-level security reads it too (docs/scale-out.md).
CREATE OR REPLACE FUNCTION sms.act_for(p_tenants text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    EXECUTE format('SET LOCAL sms.tenants = %L', coalesce(p_tenants::text, ''));
    RETURN true;
END;
$$;
