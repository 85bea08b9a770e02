-- sms.nested_leaves(path, value): the leaves of a first-generation nested delta's value at `path`,
-- each with its dotted path (keys escaped as in sms.format_path): plain values, empty objects, and
-- operator objects (every key starting with $). An object that mixes operators and keys is
-- invalid (SM001): it would be neither.
CREATE OR REPLACE FUNCTION sms.nested_leaves(p_path text, p_value jsonb, OUT path text, OUT value jsonb)
RETURNS SETOF record
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_child jsonb;
    v_here  text;
BEGIN
    FOR v_key, v_child IN SELECT key, j.value FROM jsonb_each(p_value) j LOOP
        v_here := p_path || '.' || replace(replace(v_key, '\', '\\'), '.', '\.');
        IF jsonb_typeof(v_child) = 'object' AND v_child <> '{}'
           AND EXISTS (SELECT FROM jsonb_object_keys(v_child) k WHERE left(k, 1) = '$')
           AND EXISTS (SELECT FROM jsonb_object_keys(v_child) k WHERE left(k, 1) <> '$') THEN
            PERFORM sms.raise_invalid(v_here, format('"%s" mixes operators ($…) and keys in one object', v_here));
        ELSIF jsonb_typeof(v_child) = 'object' AND v_child <> '{}'
              AND NOT EXISTS (SELECT FROM jsonb_object_keys(v_child) k WHERE left(k, 1) = '$') THEN
            RETURN QUERY SELECT l.path, l.value FROM sms.nested_leaves(v_here, v_child) l;
        ELSE
            path := v_here;
            value := v_child;
            RETURN NEXT;
        END IF;
    END LOOP;
END;
$$;
