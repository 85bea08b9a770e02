-- sms.limit_setting(name, default): a limit on input, from the setting sms.<name> (the service
-- sets sms.max_depth and sms.max_key_length from SMS_MAX_DEPTH and SMS_MAX_KEY_LENGTH), else the
-- default, so that SQL callers meet the same limits as the API.
CREATE OR REPLACE FUNCTION sms.limit_setting(p_name text, p_default integer) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('sms.' || p_name, true), '')::integer, p_default);
$$;
