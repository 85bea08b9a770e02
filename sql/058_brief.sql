-- Text helpers for digests. sms.brief(value): a JSON value as at most 60 characters of text.
CREATE OR REPLACE FUNCTION sms.brief(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_value::text) <= 60 THEN p_value::text ELSE left(p_value::text, 59) || '…' END;
$$;

-- sms.clip(text, chars): the text cut to at most `chars` characters, ending in … when cut.
CREATE OR REPLACE FUNCTION sms.clip(p_text text, p_chars integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_text) <= p_chars THEN p_text ELSE left(p_text, p_chars - 1) || '…' END;
$$;

-- sms.top_counts(counts, n): {"name": count, ...} as "a (5), b (3), … 4 more", the n largest first.
CREATE OR REPLACE FUNCTION sms.top_counts(p_counts jsonb, p_n integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(format('%s (%s)', key, value), ', ' ORDER BY value::integer DESC, key)
           || CASE WHEN (SELECT count(*) FROM jsonb_object_keys(p_counts)) > p_n
                   THEN format(', … %s more', (SELECT count(*) FROM jsonb_object_keys(p_counts)) - p_n) ELSE '' END
      FROM (SELECT key, value FROM jsonb_each(p_counts) ORDER BY value::integer DESC, key LIMIT p_n) top;
$$;
