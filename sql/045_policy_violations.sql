-- sms.policy_violations(targets, before, after, aml_level): the violations of a delta's policy
-- targets (sms.policy_targets) given the values at their bases before and after the delta
-- (sms.policy_values); NULL when there are none. Only values the delta changed are checked, so a
-- value that broke a rule before the rule existed never blocks an unrelated delta.
CREATE OR REPLACE FUNCTION sms.policy_violations(p_targets jsonb, p_before jsonb, p_after jsonb,
                                                 p_aml_level integer) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_target jsonb;
    v_base   text[];
    v_at     text;
    v_old    jsonb;
    v_new    jsonb;
    v_rest   text[];
    v_inner  text[];
    v_found  jsonb := '[]';
BEGIN
    FOR v_target IN SELECT value FROM jsonb_array_elements(p_targets) LOOP
        v_base := ARRAY(SELECT jsonb_array_elements_text(v_target -> 'base'));
        v_at := sms.format_path(v_base);
        v_old := p_before -> v_at;
        v_new := p_after -> v_at;
        CONTINUE WHEN v_old IS NOT DISTINCT FROM v_new;
        v_rest := ARRAY(SELECT jsonb_array_elements_text(v_target -> 'rest'));
        FOR v_inner IN SELECT sms.glob_paths(v_old, v_rest) UNION SELECT sms.glob_paths(v_new, v_rest) LOOP
            CONTINUE WHEN v_old #> v_inner IS NOT DISTINCT FROM v_new #> v_inner;
            v_found := v_found || coalesce((
                SELECT jsonb_agg(v) FROM sms.rule_violations(v_target -> 'rule', sms.format_path(v_base || v_inner),
                                                             v_old #> v_inner, v_new #> v_inner, p_aml_level) v), '[]');
        END LOOP;
    END LOOP;
    RETURN (SELECT jsonb_agg(v ORDER BY v ->> 'path', v ->> 'rule', v::text) FROM (
                SELECT DISTINCT v FROM jsonb_array_elements(v_found) v) d);
END;
$$;
