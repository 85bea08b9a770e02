-- sms.policy_targets(tenant, fsa, ops, aml_level): the policy rules that concern a delta's ops,
-- each with the op's path and how the rule's glob relates to it (sms.policy_relation); NULL when
-- none does. The state's own rules and the tenant's defaults (fsa_id ''), a state's rule on a path
-- replacing the defaults on that path; AML rules only when the level is below theirs (no level
-- counts as 0). Cost: a few index probes per op (sms.policy_anchor), however many rules the state
-- or tenant has on other paths; rules whose path starts with a glob are looked at for every op.
-- A rule above an op's path that only says `required` is left out: a change below a value never
-- removes it.
CREATE OR REPLACE FUNCTION sms.policy_targets(p_tenant_id text, p_fsa_id text, p_ops jsonb, p_aml_level integer)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_agg(jsonb_build_object('rule', r.rule, 'relation', rel.relation, 'base', to_jsonb(rel.base),
                                        'rest', to_jsonb(rel.rest))
                     ORDER BY op.n, r.fsa_id, r.rule_no)
      FROM (SELECT o.n, ARRAY(SELECT jsonb_array_elements_text(o.op -> 'path')) AS keys
              FROM jsonb_array_elements(p_ops) WITH ORDINALITY o(op, n)) op
     CROSS JOIN LATERAL (
            SELECT sms.format_path(op.keys) COLLATE "C" AS dotted,
                   ARRAY(SELECT coalesce(sms.format_path(op.keys[1:i]), '') COLLATE "C"
                           FROM generate_series(0, cardinality(op.keys)) i) AS prefixes) p
      JOIN sms.policies r
        ON r.tenant_id = p_tenant_id AND r.fsa_id IN ('', p_fsa_id)
       AND (r.anchor = ANY (p.prefixes) OR (r.anchor > p.dotted || '.' AND r.anchor < p.dotted || '/'))
     CROSS JOIN LATERAL sms.policy_relation(r.keys, op.keys) rel
     WHERE rel.relation IS NOT NULL
       AND NOT (rel.relation = 'above'
                AND NOT r.rule ?| ARRAY['min', 'max', 'enum', 'type', 'immutable', 'max_change'])
       AND (NOT r.rule ? 'aml_below' OR coalesce(p_aml_level, 0) < (r.rule ->> 'aml_below')::integer)
       AND (r.fsa_id <> '' OR NOT EXISTS (
                SELECT FROM sms.policies s
                 WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id AND s.anchor = r.anchor AND s.path = r.path));
$$;
