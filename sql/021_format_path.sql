-- sms.format_escaped_path(keys): sms.format_path, escaping every key's dots and backslashes.
CREATE OR REPLACE FUNCTION sms.format_escaped_path(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.' ORDER BY n)
      FROM unnest(p_keys) WITH ORDINALITY AS t(k, n);
$$;

-- sms.format_path(keys): the dotted path of a key array; the inverse of sms.parse_path. One
-- expression, which the planner inlines into the statement that calls it (a function with an
-- aggregate it cannot: each call cost a delta ~15 µs): keys with no dot or backslash to escape —
-- nearly all — are joined as they are, others escaped by sms.format_escaped_path. STABLE, as
-- array_to_string is: declared IMMUTABLE, it was never inlined (a body may not be more volatile
-- than its function) and ran as a statement of its own on every call.
CREATE OR REPLACE FUNCTION sms.format_path(p_keys text[]) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN array_to_string(p_keys, '') ~ '[.\\]' THEN sms.format_escaped_path(p_keys)
                WHEN cardinality(p_keys) > 0 THEN array_to_string(p_keys, '.') END;
$$;
