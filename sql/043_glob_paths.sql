-- sms.glob_paths(value, rest): the key paths inside a JSON value that the glob keys `rest` match
-- ({} is the value itself; a last `**` stops where it stands: the whole subtree is the value there).
CREATE OR REPLACE FUNCTION sms.glob_paths(p_value jsonb, p_rest text[]) RETURNS SETOF text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key text;
BEGIN
    IF cardinality(p_rest) = 0 OR p_rest[1] = '**' THEN
        RETURN NEXT '{}'::text[];
        RETURN;
    END IF;
    IF jsonb_typeof(p_value) IS DISTINCT FROM 'object' THEN
        RETURN;
    END IF;
    FOR v_key IN
        SELECT k FROM jsonb_object_keys(p_value) k
         WHERE CASE WHEN p_rest[1] ~ '[*?]' THEN k LIKE sms.glob_like(p_rest[1]) ELSE k = p_rest[1] END
    LOOP
        RETURN QUERY SELECT v_key || sub FROM sms.glob_paths(p_value -> v_key, p_rest[2:]) sub;
    END LOOP;
END;
$$;
