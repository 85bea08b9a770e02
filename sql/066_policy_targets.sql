-- sms.policy_targets(tenant, fsa, ops, aml_level): the policy rules that concern a delta's ops,
-- each with how the rule's glob relates to the op's path (sms.policy_relation); NULL when none
-- does. The state's own rules and the tenant's defaults (fsa_id ''), a state's rule on a path
-- replacing the defaults on that path; AML rules only when the level is below theirs (no level
-- counts as 0). A rule above an op's path that only says `required` is left out: a change below a
-- value never removes it.
-- Cost: sms.apply_ops calls it only for a state that has rules, its own or its tenant's (most have
-- none: one key probe tells). Then one key search per op, (state or defaults) and prefix of its
-- path, plus one for the rules below it, however many rules there are on other paths; rules whose
-- path starts with a glob (anchor '') are looked at for every op. Each search is a LATERAL
-- subquery kept apart (OFFSET 0), so that no estimate — of a table without statistics, say —
-- turns it into a scan of the tenant's rules; and the searches are planned once per session, not
-- per delta (a generic plan), and never compiled (JIT): their estimates are high for what they
-- read.
CREATE OR REPLACE FUNCTION sms.policy_targets(p_tenant_id text, p_fsa_id text, p_ops jsonb, p_aml_level integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
BEGIN
    RETURN (
        WITH ops AS (
            -- each op's path and its prefixes, as dotted paths (sms.format_path, written out: a
            -- function call per prefix costs more than the whole search)
            SELECT o.n, p.keys AS op_keys, p.prefixes[cardinality(p.prefixes)] AS dotted, p.prefixes
              FROM jsonb_array_elements(p_ops) WITH ORDINALITY o(op, n),
                   LATERAL (SELECT array_agg(k ORDER BY i) AS keys,
                                   '{""}' || array_agg(prefix COLLATE "C" ORDER BY i) AS prefixes
                              FROM (SELECT k, i, string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.')
                                                 OVER (ORDER BY i) AS prefix
                                      FROM jsonb_array_elements_text(o.op -> 'path') WITH ORDINALITY e(k, i)) e) p
        ), candidates AS (
            SELECT ops.n, ops.op_keys, r.*
              FROM ops, unnest(ARRAY['', p_fsa_id]) f(fsa_id), unnest(ops.prefixes) a(anchor),
                   LATERAL (SELECT * FROM sms.policies r
                             WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id AND r.anchor = a.anchor
                            OFFSET 0) r
            UNION ALL
            SELECT ops.n, ops.op_keys, r.*
              FROM ops, unnest(ARRAY['', p_fsa_id]) f(fsa_id),
                   LATERAL (SELECT * FROM sms.policies r
                             WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id
                               AND r.anchor > ops.dotted || '.' AND r.anchor < ops.dotted || '/'
                            OFFSET 0) r
        )
        SELECT jsonb_agg(jsonb_build_object('rule', c.rule, 'relation', rel.relation, 'base', to_jsonb(rel.base),
                                            'rest', to_jsonb(rel.rest))
                         ORDER BY c.n, c.fsa_id, c.rule_no)
          FROM candidates c, LATERAL sms.policy_relation(c.keys, c.op_keys) rel
         WHERE rel.relation IS NOT NULL
           AND NOT (rel.relation = 'above'
                    AND NOT c.rule ?| ARRAY['min', 'max', 'enum', 'type', 'immutable', 'max_change'])
           AND (NOT c.rule ? 'aml_below' OR coalesce(p_aml_level, 0) < (c.rule ->> 'aml_below')::integer)
           -- a state's own rule on a path replaces the defaults on it (it has the same anchor)
           AND (c.fsa_id <> '' OR NOT EXISTS (SELECT FROM candidates s
                                               WHERE s.n = c.n AND s.fsa_id <> '' AND s.path = c.path))
    );
END;
$$;
