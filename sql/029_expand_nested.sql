-- sms.expand_nested(delta): the original service's first-generation form, operators inside plain
-- objects ({"inventory": {"kitkats": {"$inc": 5000}}}), as dotted paths
-- ({"inventory.kitkats": {"$inc": 5000}}), so that the other members of `inventory` are kept: a
-- value that is a plain object holding an operator object anywhere below becomes one path per leaf
-- (sms.nested_leaves: plain leaves are set, operator objects apply). A plain object with no
-- operator inside keeps its meaning: the path is set to it. A path reached twice (once nested, once
-- dotted) is invalid (SM001).
CREATE OR REPLACE FUNCTION sms.expand_nested(p_delta jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_nested text[];  -- the keys whose value is a plain object with an operator object below
    v_key    text;
    v_value  jsonb;
    v_leaf   record;
    v_out    jsonb := '{}';
BEGIN
    IF jsonb_typeof(p_delta) IS DISTINCT FROM 'object' THEN
        RETURN p_delta;  -- sms.normalize_delta says what is wrong with it
    END IF;
    IF NOT jsonb_path_exists(p_delta, 'strict $.keyvalue() ? (!(@.key starts with "$") && @.value.type() == "object"
                                       && exists (@.value.keyvalue() ? (!(@.key starts with "$"))))') THEN
        RETURN p_delta;  -- no plain object among its values (most deltas): an expression, not a query
    END IF;
    SELECT array_agg(key) INTO v_nested FROM jsonb_each(p_delta)
     WHERE left(key, 1) <> '$' AND jsonb_typeof(value) = 'object'
       AND EXISTS (SELECT FROM jsonb_object_keys(value) k WHERE left(k, 1) <> '$')
       AND jsonb_path_exists(value, 'strict $.** ? (@.type() == "object").keyvalue() ? (@.key starts with "$")');
    IF v_nested IS NULL THEN
        RETURN p_delta;  -- nothing nested: most deltas, in this one statement
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_delta) LOOP
        IF v_key = ANY(v_nested) THEN
            FOR v_leaf IN SELECT l.path, l.value FROM sms.nested_leaves(v_key, v_value) l LOOP
                IF v_out ? v_leaf.path OR p_delta ? v_leaf.path THEN
                    PERFORM sms.raise_invalid(v_leaf.path, format('"%s" is addressed twice', v_leaf.path));
                END IF;
                v_out := v_out || jsonb_build_object(v_leaf.path, v_leaf.value);
            END LOOP;
        ELSIF v_out ? v_key THEN
            PERFORM sms.raise_invalid(v_key, format('"%s" is addressed twice', v_key));
        ELSE
            v_out := v_out || jsonb_build_object(v_key, v_value);
        END IF;
    END LOOP;
    RETURN v_out;
END;
$$;
