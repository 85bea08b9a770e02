-- sms.changes_digest(tenant, fsa, since, slice, max_tokens): sms.changes_since as deterministic,
-- LLM-ready text within a budget of estimated tokens (sms.estimate_tokens): who changed the state
-- since `since` (the five most active, and how many more), in which lineages, then one line per
-- changed path, old -> new (sms.digest_parts). All of it when it fits; else the header's
-- essentials first, who and in which lineages only where the budget allows, always keeping room
-- for the line that says how many paths were left out, then as many lines as fit. The service
-- fits the same parts by the same rule with its own tokenizer (app.domain.summary.changes_digest).
CREATE OR REPLACE FUNCTION sms.changes_digest(p_tenant_id text, p_fsa_id text, p_since bigint,
                                              p_slice text DEFAULT NULL, p_max_tokens integer DEFAULT 300)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := sms.digest_parts(p_tenant_id, p_fsa_id, p_slice,
                                        sms.changes_since(p_tenant_id, p_fsa_id, p_since, p_slice));
    v_budget  integer := greatest(p_max_tokens, 20);
    v_clauses text[] := ARRAY(SELECT jsonb_array_elements_text(v_parts -> 'clauses'));
    v_lines   text[] := ARRAY(SELECT jsonb_array_elements_text(v_parts -> 'lines'));
    v_text    text := v_parts ->> 'head';
    v_whole   text := v_text || array_to_string(v_clauses, '')
                      || CASE WHEN cardinality(v_lines) > 0 THEN E'\n' || array_to_string(v_lines, E'\n') ELSE '' END;
    v_room    integer;  -- the line saying how many paths were left out, with its line break
    v_clause  text;
    v_kept    text[] := '{}';
    v_used    integer := 0;
    v_more    text;
    v_cost    integer;
BEGIN
    IF cardinality(v_lines) = 0 OR sms.estimate_tokens(v_whole) <= v_budget THEN
        RETURN sms.clip_tokens(v_whole, v_budget);
    END IF;
    v_room := sms.estimate_tokens(format('… %s more changed paths not shown', cardinality(v_lines))) + 1;
    IF sms.estimate_tokens(v_text) + v_room > v_budget THEN
        RETURN sms.clip_tokens(v_text, v_budget);
    END IF;
    FOREACH v_clause IN ARRAY v_clauses LOOP
        IF sms.estimate_tokens(v_text || v_clause) + v_room <= v_budget THEN
            v_text := v_text || v_clause;
        END IF;
    END LOOP;
    -- all the lines when they fit, else as many as fit and how many were left out (app.domain.summary.fit)
    v_budget := v_budget - sms.estimate_tokens(v_text) - 1;
    IF (SELECT sum(sms.estimate_tokens(line) + 1) FROM unnest(v_lines) line) <= v_budget THEN
        RETURN v_text || E'\n' || array_to_string(v_lines, E'\n');
    END IF;
    FOR i IN 1 .. cardinality(v_lines) LOOP
        v_more := format('… %s more changed paths not shown', cardinality(v_lines) - i + 1);
        v_cost := sms.estimate_tokens(v_lines[i]) + 1;
        -- room to say how many were left out, unless this is the last line
        IF v_used + v_cost > v_budget - (CASE WHEN i < cardinality(v_lines) THEN sms.estimate_tokens(v_more) + 1 ELSE 0 END) THEN
            IF v_used + sms.estimate_tokens(v_more) + 1 <= v_budget THEN
                v_kept := v_kept || v_more;
            END IF;
            EXIT;
        END IF;
        v_kept := v_kept || v_lines[i];
        v_used := v_used + v_cost;
    END LOOP;
    RETURN v_text || E'\n' || array_to_string(v_kept, E'\n');
END;
$$;
