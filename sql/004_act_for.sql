-- sms.act_for(tenants): makes the current transaction act for these tenants (sms.request_tenants)
-- and returns true. The service's statements start from it — `SELECT … FROM sms.act_for($n)`, or
-- a LATERAL subquery that waits for it — so the setting is in place, for that statement's
-- transaction only, before anything reads a table; the tenants come from the request's API key,
-- never from the ids the statement names. NULL acts for no tenant.
CREATE OR REPLACE FUNCTION sms.act_for(p_tenants text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('sms.tenants', coalesce(p_tenants::text, ''), true);
    RETURN true;
END;
$$;
