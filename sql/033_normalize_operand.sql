-- sms.normalize_operand(path, op, operand): checks an operator's operand and returns its normal
-- form: $add/$remove take arrays (a single value means [value]); $push becomes
-- {"$each": [...], "$slice": n|null}. Raises SM001 naming the path.
CREATE OR REPLACE FUNCTION sms.normalize_operand(p_path text, p_op text, p_arg jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_type text := jsonb_typeof(p_arg);
    v_slice jsonb;
BEGIN
    CASE p_op
    WHEN 'set' THEN
        RETURN p_arg;
    WHEN 'unset' THEN
        IF p_arg <> 'true' THEN
            PERFORM sms.raise_invalid(p_path, format('$unset at "%s" takes true', p_path));
        END IF;
    WHEN 'inc' THEN
        IF v_type <> 'number' THEN
            PERFORM sms.raise_invalid(p_path, format('$inc at "%s" takes a number, not %s', p_path, v_type));
        END IF;
    WHEN 'max', 'min' THEN
        IF v_type NOT IN ('number', 'string') THEN
            PERFORM sms.raise_invalid(p_path, format('$%s at "%s" takes a number or a string, not %s',
                                                     p_op, p_path, v_type));
        END IF;
    WHEN 'add', 'remove' THEN
        RETURN CASE WHEN v_type = 'array' THEN p_arg ELSE jsonb_build_array(p_arg) END;
    WHEN 'push' THEN
        IF v_type = 'object' AND p_arg ? '$each' THEN
            IF EXISTS (SELECT FROM jsonb_object_keys(p_arg) k WHERE k NOT IN ('$each', '$slice')) THEN
                PERFORM sms.raise_invalid(p_path, format('$push at "%s" takes {"$each": [...], "$slice": n} and nothing else', p_path));
            END IF;
            IF jsonb_typeof(p_arg -> '$each') <> 'array' THEN
                PERFORM sms.raise_invalid(p_path, format('$each at "%s" takes an array', p_path));
            END IF;
            v_slice := nullif(p_arg -> '$slice', 'null');
            IF v_slice IS NOT NULL AND (jsonb_typeof(v_slice) <> 'number'
                                        OR (v_slice #>> '{}')::numeric <> trunc((v_slice #>> '{}')::numeric)
                                        OR abs((v_slice #>> '{}')::numeric) > 1000000) THEN
                PERFORM sms.raise_invalid(p_path, format('$slice at "%s" takes an integer (-N keeps the last N)', p_path));
            END IF;
            RETURN jsonb_build_object('$each', p_arg -> '$each', '$slice', coalesce(v_slice, 'null'));
        END IF;
        RETURN jsonb_build_object('$each', jsonb_build_array(p_arg), '$slice', 'null'::jsonb);
    WHEN 'merge' THEN
        IF v_type <> 'object' THEN
            PERFORM sms.raise_invalid(p_path, format('$merge at "%s" takes an object, not %s', p_path, v_type));
        END IF;
    END CASE;
    RETURN p_arg;
END;
$$;
