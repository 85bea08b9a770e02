-- sms.apply_op(target, path, op, operand, at): applies one normalised operator (see
-- sms.normalize_delta) at `path` inside the JSON value `target` and returns the new value.
-- SQL NULL stands for "absent" both ways: a NULL target is a missing path, a NULL result
-- removes the key. Missing intermediate objects are created; writing through a non-object
-- raises SM002 (type mismatch), as does an operator meeting a value of the wrong type. `at` is
-- the delta's dotted path, for messages. $unset and $remove on a missing path change nothing.
CREATE OR REPLACE FUNCTION sms.apply_op(p_target jsonb, p_path text[], p_op text, p_arg jsonb, p_at text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_type  text := jsonb_typeof(p_target);
    v_child jsonb;
    v_each  jsonb;
    v_slice int;
BEGIN
    IF cardinality(p_path) > 0 THEN
        IF p_op IN ('unset', 'remove') AND (v_type IS NULL OR v_type <> 'object') THEN
            RETURN p_target;   -- the path does not exist: nothing to remove
        END IF;
        IF v_type IS NULL THEN
            p_target := '{}';
        ELSIF v_type <> 'object' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM002',
                MESSAGE = format('cannot write "%s": a value on the way is %s, not an object', p_at, v_type),
                DETAIL = jsonb_build_object('path', p_at, 'found', v_type)::text;
        END IF;
        v_child := sms.apply_op(p_target -> p_path[1], p_path[2:], p_op, p_arg, p_at);
        IF v_child IS NULL THEN
            RETURN p_target - p_path[1];
        END IF;
        RETURN p_target || jsonb_build_object(p_path[1], v_child);
    END IF;

    CASE p_op
    WHEN 'set' THEN
        RETURN p_arg;
    WHEN 'unset' THEN
        RETURN NULL;
    WHEN 'merge' THEN
        RETURN sms.merge_patch(p_target, p_arg);
    WHEN 'inc' THEN
        IF v_type IS NULL THEN
            RETURN p_arg;
        ELSIF v_type = 'number' THEN
            v_each := to_jsonb(p_target::numeric + p_arg::numeric);
            IF sms.needs_check(v_each) THEN  -- a sum may leave the range its terms kept
                PERFORM sms.check_number(p_at, v_each);
            END IF;
            RETURN v_each;
        END IF;
    WHEN 'max', 'min' THEN
        IF v_type IS NULL THEN
            RETURN p_arg;
        ELSIF v_type = jsonb_typeof(p_arg) AND v_type = 'number' THEN
            RETURN CASE WHEN (p_arg::numeric > p_target::numeric) = (p_op = 'max') THEN p_arg ELSE p_target END;
        ELSIF v_type = jsonb_typeof(p_arg) AND v_type = 'string' THEN
            -- byte order, so that the result never depends on the database's collation
            RETURN CASE WHEN ((p_arg #>> '{}') COLLATE "C" > (p_target #>> '{}') COLLATE "C") = (p_op = 'max')
                        THEN p_arg ELSE p_target END;
        END IF;
    WHEN 'add' THEN
        IF v_type IS NULL OR v_type = 'array' THEN
            RETURN coalesce(p_target, '[]') || coalesce((
                SELECT jsonb_agg(e ORDER BY i) FROM (
                    SELECT DISTINCT ON (e) e, i FROM jsonb_array_elements(p_arg) WITH ORDINALITY a(e, i)
                     WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(coalesce(p_target, '[]')) t(x) WHERE x = e)
                     ORDER BY e, i) d), '[]');
        END IF;
    WHEN 'remove' THEN
        IF v_type IS NULL THEN
            RETURN NULL;
        ELSIF v_type = 'array' THEN
            RETURN coalesce((
                SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(p_target) WITH ORDINALITY t(x, i)
                 WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(p_arg) r(e) WHERE e = x)), '[]');
        END IF;
    WHEN 'push' THEN
        IF v_type IS NULL OR v_type = 'array' THEN
            v_each := coalesce(p_target, '[]') || (p_arg -> '$each');
            IF jsonb_typeof(p_arg -> '$slice') = 'number' THEN
                v_slice := (p_arg ->> '$slice')::int;
                v_each := coalesce((
                    SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(v_each) WITH ORDINALITY t(x, i)
                     WHERE CASE WHEN v_slice < 0 THEN i > jsonb_array_length(v_each) + v_slice
                                ELSE i <= v_slice END), '[]');
            END IF;
            RETURN v_each;
        END IF;
    END CASE;

    RAISE EXCEPTION USING ERRCODE = 'SM002',
        MESSAGE = format('$%s at "%s" cannot apply to %s (%s)', p_op, p_at, v_type,
            CASE p_op WHEN 'inc' THEN 'needs a number'
                      WHEN 'max' THEN 'needs a value of the operand''s type: number or string'
                      WHEN 'min' THEN 'needs a value of the operand''s type: number or string'
                      ELSE 'needs an array' END),
        DETAIL = jsonb_build_object('path', p_at, 'op', '$' || p_op, 'found', v_type)::text;
END;
$$;
