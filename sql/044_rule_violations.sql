-- sms.rule_violations(rule, path, old, new, aml_level): what one rule says of the change of the
-- value at `path` from `old` to `new` (NULL: absent), as violations
-- {"path", "rule", "value", "limit", "message"[, "name"][, "aml_level", "aml_below"]}. An absent
-- value passes min, max, enum and type (use required); an AML rule's message names the level.
CREATE OR REPLACE FUNCTION sms.rule_violations(p_rule jsonb, p_path text, p_old jsonb, p_new jsonb,
                                               p_aml_level integer) RETURNS SETOF jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_type   text := jsonb_typeof(p_new);
    v_prefix text := CASE WHEN p_rule ? 'aml_below'
                          THEN format('AML level %s is below %s: ', coalesce(p_aml_level, 0), p_rule ->> 'aml_below')
                          ELSE '' END;
    v_change numeric;
    v_found  record;
BEGIN
    FOR v_found IN
        SELECT * FROM (VALUES
            ('min', p_rule -> 'min',
             CASE WHEN NOT p_rule ? 'min' OR p_new IS NULL THEN NULL
                  WHEN v_type <> 'number' THEN format('"%s" would be %s, not a number (at least %s)', p_path,
                                                      sms.brief(p_new), p_rule -> 'min')
                  WHEN p_new::numeric < (p_rule ->> 'min')::numeric
                  THEN format('"%s" would be %s, below the minimum %s', p_path, p_new, p_rule -> 'min') END),
            ('max', p_rule -> 'max',
             CASE WHEN NOT p_rule ? 'max' OR p_new IS NULL THEN NULL
                  WHEN v_type <> 'number' THEN format('"%s" would be %s, not a number (at most %s)', p_path,
                                                      sms.brief(p_new), p_rule -> 'max')
                  WHEN p_new::numeric > (p_rule ->> 'max')::numeric
                  THEN format('"%s" would be %s, above the maximum %s', p_path, p_new, p_rule -> 'max') END),
            ('enum', p_rule -> 'enum',
             CASE WHEN p_rule ? 'enum' AND p_new IS NOT NULL
                       AND NOT EXISTS (SELECT FROM jsonb_array_elements(p_rule -> 'enum') e WHERE e = p_new)
                  THEN format('"%s" would be %s, not one of %s', p_path, sms.brief(p_new),
                              sms.brief(p_rule -> 'enum')) END),
            ('type', p_rule -> 'type',
             CASE WHEN p_rule ? 'type' AND p_new IS NOT NULL
                       AND v_type <> p_rule ->> 'type'
                       AND NOT (p_rule ->> 'type' = 'integer' AND v_type = 'number'
                                AND p_new::numeric = trunc(p_new::numeric))
                  THEN format('"%s" would be %s, not of type %s', p_path,
                              CASE WHEN v_type IN ('object', 'array') THEN 'an ' || v_type ELSE sms.brief(p_new) END,
                              p_rule ->> 'type') END),
            ('required', 'true'::jsonb,
             CASE WHEN p_rule ? 'required' AND p_old IS NOT NULL AND p_new IS NULL
                  THEN format('"%s" is required and may not be removed', p_path) END),
            ('immutable', 'true'::jsonb,
             CASE WHEN p_rule ? 'immutable' AND p_old IS NOT NULL AND p_new IS DISTINCT FROM p_old
                  THEN format('"%s" is immutable once set', p_path) END)
        ) v(rule, lim, message)
        WHERE message IS NOT NULL
    LOOP
        RETURN NEXT jsonb_strip_nulls(jsonb_build_object(
            'path', p_path, 'rule', v_found.rule, 'value', p_new, 'limit', v_found.lim,
            'message', v_prefix || v_found.message, 'name', p_rule -> 'name'))
            || CASE WHEN p_rule ? 'aml_below' THEN jsonb_build_object('aml_level', coalesce(p_aml_level, 0),
                                                                     'aml_below', p_rule -> 'aml_below')
                    ELSE '{}' END;
    END LOOP;
    IF p_rule ? 'max_change' AND p_new IS DISTINCT FROM p_old THEN
        -- numbers change by their difference (absent counts as 0); any other change is unbounded
        IF coalesce(jsonb_typeof(p_old), 'number') = 'number' AND coalesce(v_type, 'number') = 'number' THEN
            v_change := coalesce(p_new::numeric, 0) - coalesce(p_old::numeric, 0);
        END IF;
        IF v_change IS NULL OR abs(v_change) > (p_rule ->> 'max_change')::numeric THEN
            RETURN NEXT jsonb_strip_nulls(jsonb_build_object(
                'path', p_path, 'rule', 'max_change', 'value', to_jsonb(v_change), 'limit', p_rule -> 'max_change',
                'name', p_rule -> 'name',
                'message', v_prefix || CASE WHEN v_change IS NULL
                    THEN format('"%s" may change by at most %s in one delta, and this change is not numeric',
                                p_path, p_rule -> 'max_change')
                    ELSE format('"%s" would change by %s, more than %s in one delta', p_path, v_change,
                                p_rule -> 'max_change') END))
                || CASE WHEN p_rule ? 'aml_below' THEN jsonb_build_object('aml_level', coalesce(p_aml_level, 0),
                                                                         'aml_below', p_rule -> 'aml_below')
                        ELSE '{}' END;
        END IF;
    END IF;
END;
$$;
