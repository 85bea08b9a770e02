-- sms.normalize_delta(delta): validates a delta in its wire format (DESIGN §4.1) and returns it
-- normalised:
--   {"ops":    [{"path": [keys], "op": "set|unset|inc|max|min|add|remove|push|merge",
--                "value": operand}, ...],
--    "expect": [{"path": [keys], "value": v} | {"path": [keys], "exists": bool}, ...]}
-- The first-generation nested form is expanded first (sms.expand_nested: operators inside plain
-- objects become dotted paths). Aliases are resolved ($addToSet -> add, $pull -> remove), a plain
-- value becomes "set", $push
-- operands become {"$each": [...], "$slice": n|null} and $add/$remove operands arrays.
-- Anything malformed raises SM001 naming the offending path, and every value and operand is
-- checked by sms.check_value (nesting, key lengths, numbers, no $-keys in plain values); nothing is
-- read or written.
-- Paths may not overlap (one a prefix of another), so the order of ops never matters.
CREATE OR REPLACE FUNCTION sms.normalize_delta(p_delta jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_key    text;
    v_value  jsonb;
    v_path   text[];
    v_op     text;
    v_arg    jsonb;
    v_ops    jsonb := '[]';
    v_expect jsonb := '[]';
    v_firsts text[] := '{}';    -- the paths' first keys
    v_shared boolean := false;  -- whether two paths share their first key
    v_clash  record;
    v_count  bigint;    -- an object value's keys: how many,
    v_all_ops boolean;  -- whether all start with $,
    v_names  text;      -- and their names
BEGIN
    IF p_delta IS NULL OR jsonb_typeof(p_delta) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = format('a delta must be a JSON object of paths, not %s',
                             coalesce(jsonb_typeof(p_delta), 'nothing'));
    END IF;

    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(sms.expand_nested(p_delta)) LOOP
        IF v_key = '$expect' THEN
            PERFORM sms.check_value(v_key, v_value);
            v_expect := sms.normalize_expect(v_value);
            CONTINUE;
        END IF;
        IF left(v_key, 1) = '$' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM001',
                MESSAGE = format('"%s" is not a path: top-level keys starting with $ are reserved '
                                 '(only $expect is defined)', v_key),
                DETAIL = jsonb_build_object('path', v_key)::text;
        END IF;
        IF length(v_key) > sms.limit_setting('max_key_length', 512) THEN
            PERFORM sms.raise_invalid(left(v_key, 100), format('a path is %s characters long; at most %s are allowed',
                                                               length(v_key), sms.limit_setting('max_key_length', 512)));
        END IF;
        v_path := sms.parse_path(v_key);
        v_shared := v_shared OR (v_path[1] = ANY(v_firsts)) IS NOT FALSE;
        v_firsts := v_firsts || v_path[1];

        v_count := 0;
        IF jsonb_typeof(v_value) = 'object' THEN  -- one look at its keys
            SELECT count(*), bool_and(left(k, 1) = '$'), string_agg(k, ', ')
              INTO v_count, v_all_ops, v_names FROM jsonb_object_keys(v_value) k;
        END IF;
        IF v_count > 0 AND v_all_ops THEN
            -- an operator object: exactly one $-key
            IF v_count > 1 THEN
                RAISE EXCEPTION USING ERRCODE = 'SM001',
                    MESSAGE = format('"%s" has several operators (%s); give one operator per path',
                                     v_key, v_names),
                    DETAIL = jsonb_build_object('path', v_key)::text;
            END IF;
            v_op := v_names;
            v_arg := v_value -> v_op;
            IF sms.needs_check(v_arg) THEN  -- a statement only for what it has to look at
                PERFORM sms.check_value(v_key, v_arg);
            END IF;
            v_op := CASE v_op
                WHEN '$set' THEN 'set'     WHEN '$unset' THEN 'unset'
                WHEN '$inc' THEN 'inc'     WHEN '$max' THEN 'max'      WHEN '$min' THEN 'min'
                WHEN '$add' THEN 'add'     WHEN '$addToSet' THEN 'add'
                WHEN '$remove' THEN 'remove' WHEN '$pull' THEN 'remove'
                WHEN '$push' THEN 'push'   WHEN '$merge' THEN 'merge'
                ELSE sms.raise_invalid(v_key, format('unknown operator %s at "%s" (known: $set, '
                    '$unset, $inc, $max, $min, $add, $addToSet, $remove, $pull, $push, $merge)',
                    v_op, v_key)) END;
            v_arg := sms.normalize_operand(v_key, v_op, v_arg);
        ELSE
            IF sms.needs_check(v_value) THEN
                PERFORM sms.check_value(v_key, v_value, true);
            END IF;
            v_op := 'set';
            v_arg := v_value;
        END IF;
        v_ops := v_ops || jsonb_build_object('path', to_jsonb(v_path), 'op', v_op, 'value', v_arg);
    END LOOP;

    IF v_ops = '[]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = 'the delta changes nothing: give at least one path';
    END IF;

    -- Overlapping paths: in sorted order a path's prefix-sibling sorts right before it. Paths that
    -- overlap share their first key: when none do (most deltas), there is nothing to look for.
    IF v_shared THEN
        SELECT prev, cur INTO v_clash FROM (
            SELECT p AS cur, lag(p) OVER (ORDER BY p) AS prev
              FROM (SELECT ARRAY(SELECT jsonb_array_elements_text(o -> 'path')) COLLATE "C" AS p
                      FROM jsonb_array_elements(v_ops) o) s
        ) t WHERE prev IS NOT NULL AND cur[1:cardinality(prev)] = prev LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SM001',
                MESSAGE = format('paths "%s" and "%s" overlap; address each part of the state once',
                                 sms.format_path(v_clash.prev), sms.format_path(v_clash.cur)),
                DETAIL = jsonb_build_object('path', sms.format_path(v_clash.cur))::text;
        END IF;
    END IF;

    RETURN jsonb_build_object('ops', v_ops, 'expect', v_expect);
END;
$$;
