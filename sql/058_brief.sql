-- sms.brief(value): a JSON value as at most 60 characters of text, for digests.
CREATE OR REPLACE FUNCTION sms.brief(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_value::text) <= 60 THEN p_value::text ELSE left(p_value::text, 59) || '…' END;
$$;
