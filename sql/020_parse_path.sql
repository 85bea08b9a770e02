-- sms.parse_path(path): a dotted delta path into its keys. `\.` is a literal dot and `\\` a
-- literal backslash; every key must be non-empty. Raises SM001 (invalid delta) naming the path.
CREATE OR REPLACE FUNCTION sms.parse_path(p_path text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_keys text[];
BEGIN
    IF p_path !~ '^(?:[^.\\]|\\[.\\])+(?:\.(?:[^.\\]|\\[.\\])+)*$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SM001',
            MESSAGE = format('invalid path "%s": keys are separated by single dots, must not be '
                             'empty, and only \. and \\ may be escaped', p_path),
            DETAIL = jsonb_build_object('path', p_path)::text;
    END IF;
    IF strpos(p_path, '\') = 0 THEN  -- nothing escaped (nearly always): split at the dots
        v_keys := string_to_array(p_path, '.');
    ELSE
        SELECT array_agg(regexp_replace(m[1], '\\(.)', '\1', 'g') ORDER BY n)
          INTO v_keys
          FROM regexp_matches(p_path, '((?:[^.\\]|\\[.\\])+)', 'g') WITH ORDINALITY AS t(m, n);
    END IF;
    IF cardinality(v_keys) > 64 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SM006',
            MESSAGE = format('path "%s" is %s keys deep; at most 64 are allowed',
                             left(p_path, 200), cardinality(v_keys)),
            DETAIL = jsonb_build_object('path', left(p_path, 200))::text;
    END IF;
    RETURN v_keys;
END;
$$;
