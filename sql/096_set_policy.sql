-- sms.set_policy(tenant, fsa, rules, actor): replaces the rule set of a state — or, with fsa NULL,
-- the tenant's defaults — by `rules`, a JSON array of rules (each checked by sms.check_rule; []
-- removes them all), records the change in sms.policy_changes and returns the rules now set.
-- Changes of one rule set are serialised, and a state's take its fence (sms.state_fence), so that
-- a purge under way is never passed. At most 10,000 rules per set.
CREATE OR REPLACE FUNCTION sms.set_policy(p_tenant_id text, p_fsa_id text, p_rules jsonb,
                                          p_actor text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_fsa   text := coalesce(p_fsa_id, '');
    v_rules jsonb;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('actor', p_actor);
    IF p_fsa_id IS NOT NULL THEN
        PERFORM sms.check_id('fsa_id', p_fsa_id);
    END IF;
    IF jsonb_typeof(p_rules) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'rules are a JSON array of rule objects';
    END IF;
    IF jsonb_array_length(p_rules) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM006',
            MESSAGE = format('%s rules; at most 10000 are allowed per state or tenant', jsonb_array_length(p_rules));
    END IF;
    SELECT coalesce(jsonb_agg(sms.check_rule(r) ORDER BY n), '[]') INTO v_rules
      FROM jsonb_array_elements(p_rules) WITH ORDINALITY x(r, n);
    IF p_fsa_id IS NOT NULL THEN
        PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant_id, 29) # hashtextextended(v_fsa, 31));
    DELETE FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id = v_fsa;
    INSERT INTO sms.policies (tenant_id, fsa_id, rule_no, path, keys, anchor, rule)
    SELECT p_tenant_id, v_fsa, n, r ->> 'path', k, sms.policy_anchor(k), r
      FROM jsonb_array_elements(v_rules) WITH ORDINALITY x(r, n),
           LATERAL sms.parse_path(r ->> 'path') k;
    INSERT INTO sms.policy_changes (tenant_id, fsa_id, actor, rules) VALUES (p_tenant_id, v_fsa, p_actor, v_rules);
    RETURN v_rules;
END;
$$;
