-- sms.format_path(keys): the dotted path of a key array; the inverse of sms.parse_path.
CREATE OR REPLACE FUNCTION sms.format_path(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.' ORDER BY n)
      FROM unnest(p_keys) WITH ORDINALITY AS t(k, n);
$$;
