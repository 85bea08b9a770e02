-- sms.policy_targets(tenant, fsa, ops, aml_level): the policy rules that concern a delta's ops,
-- each with how the rule's glob relates to the op's path (sms.policy_relation); NULL when none
-- does. The state's own rules and the tenant's defaults (fsa_id ''), a state's rule on a path
-- replacing the defaults on that path; AML rules only when the level is below theirs (no level
-- counts as 0). A rule above an op's path that only says `required` is left out: a change below a
-- value never removes it.
-- Cost: two index searches per op (its primary key: the rules anchored at one of the path's
-- prefixes, and those anchored below it), however many rules the state or tenant has on other
-- paths; rules whose path starts with a glob (anchor '') are looked at for every op.
CREATE OR REPLACE FUNCTION sms.policy_targets(p_tenant_id text, p_fsa_id text, p_ops jsonb, p_aml_level integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_keys     text[];
    v_prefixes text[];
    v_dotted   text;
    v_found    jsonb := '[]';
BEGIN
    FOR v_keys IN SELECT ARRAY(SELECT jsonb_array_elements_text(o -> 'path')) FROM jsonb_array_elements(p_ops) o LOOP
        v_prefixes := ARRAY(SELECT coalesce(sms.format_path(v_keys[1:i]), '')
                              FROM generate_series(0, cardinality(v_keys)) i);
        v_dotted := sms.format_path(v_keys);
        v_found := v_found || coalesce((
            WITH candidates AS (
                -- one key search per (defaults or state, anchor): each a LATERAL subquery kept apart
                -- (OFFSET 0), so that no estimate of a table without statistics can turn them into
                -- a scan of every rule of the tenant
                SELECT r.* FROM unnest(ARRAY['', p_fsa_id]) f(fsa_id), unnest(v_prefixes) a(anchor),
                       LATERAL (SELECT * FROM sms.policies r
                                 WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id
                                   AND r.anchor = a.anchor COLLATE "C" OFFSET 0) r
                UNION ALL
                SELECT r.* FROM unnest(ARRAY['', p_fsa_id]) f(fsa_id),
                       LATERAL (SELECT * FROM sms.policies r
                                 WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id
                                   AND r.anchor > (v_dotted || '.') COLLATE "C"
                                   AND r.anchor < (v_dotted || '/') COLLATE "C" OFFSET 0) r
            )
            SELECT jsonb_agg(jsonb_build_object('rule', r.rule, 'relation', rel.relation, 'base', to_jsonb(rel.base),
                                                'rest', to_jsonb(rel.rest))
                             ORDER BY r.fsa_id, r.rule_no)
              FROM candidates r, LATERAL sms.policy_relation(r.keys, v_keys) rel
             WHERE rel.relation IS NOT NULL
               AND NOT (rel.relation = 'above'
                        AND NOT r.rule ?| ARRAY['min', 'max', 'enum', 'type', 'immutable', 'max_change'])
               AND (NOT r.rule ? 'aml_below' OR coalesce(p_aml_level, 0) < (r.rule ->> 'aml_below')::integer)
               -- a state's own rule on a path replaces the defaults on it (it has the same anchor)
               AND (r.fsa_id <> '' OR NOT EXISTS (SELECT FROM candidates s WHERE s.fsa_id <> '' AND s.path = r.path))
        ), '[]');
    END LOOP;
    RETURN nullif(v_found, '[]');
END;
$$;
