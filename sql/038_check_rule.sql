-- sms.check_rule(rule): checks one policy rule and returns it normalised (DESIGN §10):
--   {"path": "resources.inventory.*",        a path glob: dotted keys, `*` and `?` within a key,
--                                             `**` as the last key for "this and everything below",
--                                             checked at each path a delta writes there (so with
--                                             `**` only required, immutable and max_change apply)
--    "min": n, "max": n,                     a number within bounds
--    "enum": [v, ...],                       one of these values
--    "type": "string|number|integer|boolean|object|array|null",
--    "required": true,                       may not be removed once it exists
--    "immutable": true,                      may not change once it exists
--    "max_change": n,                        may not change by more than n in one delta (a value
--                                             that is no number may not change at all)
--    "aml_below": n,                         the rule binds only actors whose AML level is below n
--    "name": "..."}                          for messages and reports
-- A rule needs a path and at least one of min, max, enum, type, required, immutable, max_change.
-- Raises SM012 (invalid policy) naming what is wrong.
CREATE OR REPLACE FUNCTION sms.check_rule(p_rule jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_path  text := p_rule ->> 'path';
    v_keys  text[];
    v_extra text;
BEGIN
    IF jsonb_typeof(p_rule) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a rule is a JSON object with a path and constraints';
    END IF;
    SELECT string_agg(k, ', ') INTO v_extra FROM jsonb_object_keys(p_rule) k
     WHERE k NOT IN ('path', 'min', 'max', 'enum', 'type', 'required', 'immutable', 'max_change', 'aml_below', 'name');
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('unknown rule field(s) %s (known: path, min, max, enum, type, required, immutable, '
                             'max_change, aml_below, name)', v_extra);
    END IF;
    IF jsonb_typeof(p_rule -> 'path') IS DISTINCT FROM 'string' OR length(v_path) NOT BETWEEN 1 AND 512 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a rule needs a path: a string of 1 to 512 characters';
    END IF;
    BEGIN
        v_keys := sms.parse_path(v_path);
    EXCEPTION WHEN SQLSTATE 'SM001' OR SQLSTATE 'SM006' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('invalid rule path "%s": keys are separated by '
            'single dots and must not be empty; `\.` is a literal dot', left(v_path, 200));
    END;
    IF '**' = ANY (v_keys[1:cardinality(v_keys) - 1]) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('invalid rule path "%s": ** may only be the last key', left(v_path, 200));
    END IF;
    IF v_keys[cardinality(v_keys)] = '**' AND p_rule ?| ARRAY['min', 'max', 'enum', 'type'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": min, max, enum and type need a path to values (use * for each key), '
                             'not **, which also matches the objects that hold them', left(v_path, 200));
    END IF;
    IF NOT p_rule ?| ARRAY['min', 'max', 'enum', 'type', 'required', 'immutable', 'max_change'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('the rule for "%s" constrains nothing: give min, '
            'max, enum, type, required, immutable or max_change', left(v_path, 200));
    END IF;
    IF (p_rule ? 'min' AND jsonb_typeof(p_rule -> 'min') <> 'number')
       OR (p_rule ? 'max' AND jsonb_typeof(p_rule -> 'max') <> 'number')
       OR (p_rule ? 'max_change' AND (jsonb_typeof(p_rule -> 'max_change') <> 'number'
                                      OR (p_rule ->> 'max_change')::numeric < 0)) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": min and max take numbers, max_change a number of at least 0',
                             left(v_path, 200));
    END IF;
    IF p_rule ? 'min' AND p_rule ? 'max' AND (p_rule ->> 'min')::numeric > (p_rule ->> 'max')::numeric THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('the rule for "%s": min is above max', left(v_path, 200));
    END IF;
    IF p_rule ? 'enum' AND (jsonb_typeof(p_rule -> 'enum') <> 'array' OR jsonb_array_length(p_rule -> 'enum')
                            NOT BETWEEN 1 AND 1000) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": enum takes an array of 1 to 1000 values', left(v_path, 200));
    END IF;
    IF p_rule ? 'type' AND NOT coalesce(p_rule ->> 'type' = ANY
            (ARRAY['string', 'number', 'integer', 'boolean', 'object', 'array', 'null']), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('the rule for "%s": type is one of string, number, '
            'integer, boolean, object, array, null', left(v_path, 200));
    END IF;
    IF (p_rule ? 'required' AND p_rule -> 'required' <> 'true')
       OR (p_rule ? 'immutable' AND p_rule -> 'immutable' <> 'true') THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": required and immutable take true', left(v_path, 200));
    END IF;
    IF p_rule ? 'aml_below' AND (jsonb_typeof(p_rule -> 'aml_below') <> 'number'
                                 OR p_rule ->> 'aml_below' !~ '^[0-9]{1,3}$'
                                 OR (p_rule ->> 'aml_below')::integer NOT BETWEEN 1 AND 100) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": aml_below takes a whole number from 1 to 100', left(v_path, 200));
    END IF;
    IF p_rule ? 'name' AND (jsonb_typeof(p_rule -> 'name') <> 'string' OR length(p_rule ->> 'name') > 200) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": name takes a string of up to 200 characters', left(v_path, 200));
    END IF;
    RETURN p_rule;
END;
$$;
