-- sms.glob_like(glob): a key glob (`*` any characters, `?` one) as a LIKE pattern, every other
-- character literal.
CREATE OR REPLACE FUNCTION sms.glob_like(p_glob text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT replace(replace(replace(replace(replace(p_glob, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%'), '?', '_');
$$;
