-- sms.policy_relation(rule_keys, path): how a rule's path glob concerns a delta's path, or NULL
-- when it does not:
--   'exact' — the glob matches the path, or a `**` glob matches it or an ancestor of it: the value
--             at the path itself is checked (base = the path). So `config.**` with immutable keeps
--             every value under config that exists, and lets new keys be added beside them;
--   'below' — the glob matches paths under it: the values under the path that match `rest` are
--             checked (base = the path);
--   'above' — the glob matches an ancestor (base): a change under it changes that ancestor.
CREATE OR REPLACE FUNCTION sms.policy_relation(p_rule text[], p_path text[],
                                               OUT relation text, OUT base text[], OUT rest text[])
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_deep boolean := p_rule[cardinality(p_rule)] = '**';
    v_core text[]  := CASE WHEN v_deep THEN p_rule[1:cardinality(p_rule) - 1] ELSE p_rule END;
    v_n    integer := cardinality(p_path);
    v_k    integer := cardinality(v_core);
BEGIN
    FOR i IN 1 .. least(v_k, v_n) LOOP
        IF NOT (p_path[i] = v_core[i] OR (v_core[i] ~ '[*?]' AND p_path[i] LIKE sms.glob_like(v_core[i]))) THEN
            RETURN;
        END IF;
    END LOOP;
    IF v_k > v_n THEN
        relation := 'below';
        base := p_path;
        rest := v_core[v_n + 1:] || CASE WHEN v_deep THEN ARRAY['**'] ELSE '{}'::text[] END;
    ELSIF v_k = v_n OR v_deep THEN
        relation := 'exact';
        base := p_path;
        rest := '{}';
    ELSE
        relation := 'above';
        base := p_path[1:v_k];
        rest := '{}';
    END IF;
END;
$$;
