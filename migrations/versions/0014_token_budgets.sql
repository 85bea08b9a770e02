-- Frozen copy of what revision 0014 installs (the sql/ files as they were), run as one script.

-- ===== sql/058_clip_tokens.sql
-- sms.clip_tokens(text, max_tokens): the text, or its longest prefix that fits in max_tokens
-- estimated tokens (sms.estimate_tokens) with … after it; '' when not even … fits. Like
-- Tokenizer.clip in app/domain/tokens.py, by the same binary search.
CREATE OR REPLACE FUNCTION sms.clip_tokens(p_text text, p_max_tokens integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_fits    integer := 0;  -- left(p_text, v_fits) || '…' is within the budget
    v_longest integer := length(p_text) - 1;
    v_middle  integer;
BEGIN
    IF sms.estimate_tokens(p_text) <= p_max_tokens THEN
        RETURN p_text;
    END IF;
    IF sms.estimate_tokens('…') > p_max_tokens THEN
        RETURN '';
    END IF;
    WHILE v_fits < v_longest LOOP
        v_middle := (v_fits + v_longest + 1) / 2;
        IF sms.estimate_tokens(left(p_text, v_middle) || '…') <= p_max_tokens THEN
            v_fits := v_middle;
        ELSE
            v_longest := v_middle - 1;
        END IF;
    END LOOP;
    RETURN left(p_text, v_fits) || '…';
END;
$$;

-- ===== sql/058_estimate_tokens.sql
-- sms.estimate_tokens(text): a conservative token count of the text, for budgets in SQL (the
-- changes digest): its UTF-8 bytes, less one per two letters of each run of ASCII letters and
-- one per space before printable ASCII other than a digit. The service counts the same way when
-- no tokenizer is configured; app/domain/tokens.py says why it does not under-count real tokenizers.
CREATE OR REPLACE FUNCTION sms.estimate_tokens(p_text text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT octet_length(p_text)
           - coalesce((SELECT sum(length(run[1]) / 2) FROM regexp_matches(p_text, '[A-Za-z]+', 'g') run), 0)::integer
           - regexp_count(p_text, ' (?=[!-/:-~])');
$$;

-- ===== sql/106_digest_parts.sql
-- sms.digest_parts(tenant, fsa, slice, changes): the pieces of the digest of sms.changes_since's
-- result `changes`, to be fitted into a token budget: "head", the essentials (which state and
-- versions, how many deltas; or that nothing changed); "clauses", who changed it (the five most
-- active, and how many more) and in which lineages, each added only where the budget allows; and
-- "lines", one per changed path, old -> new. sms.changes_digest fits them into a budget of
-- estimated tokens; the service into one of its tokenizer's, by the same rule
-- (app.domain.summary.changes_digest).
CREATE OR REPLACE FUNCTION sms.digest_parts(p_tenant_id text, p_fsa_id text, p_slice text, p_changes jsonb)
RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN (p_changes ->> 'deltas')::integer = 0 THEN
               jsonb_build_object('head', format('No changes to %s/%s%s since v%s (now v%s).', p_tenant_id, p_fsa_id,
                                                 scope.within, p_changes -> 'since', p_changes -> 'version'),
                                  'clauses', '[]'::jsonb, 'lines', '[]'::jsonb)
           ELSE
               jsonb_build_object(
                   'head', format('Changes to %s/%s%s v%s -> v%s: %s deltas', p_tenant_id, p_fsa_id, scope.within,
                                  p_changes -> 'since', p_changes -> 'version', p_changes -> 'deltas'),
                   'clauses', jsonb_build_array(' by ' || sms.top_counts(p_changes -> 'actors', 5))
                              || CASE WHEN p_changes -> 'lineages' <> '{}'
                                      THEN jsonb_build_array('; lineages ' || sms.top_counts(p_changes -> 'lineages', 5))
                                      ELSE '[]' END,
                   'lines', coalesce((
                       SELECT jsonb_agg(format('- %s: %s -> %s (v%s, %s)', c.change ->> 'path',
                                               coalesce(sms.brief(c.change -> 'old'), '(absent)'),
                                               coalesce(sms.brief(c.change -> 'new'), '(removed)'),
                                               c.change -> 'version',
                                               (SELECT string_agg(a, ', ') FROM jsonb_array_elements_text(c.change -> 'actors') a))
                                        ORDER BY c.i)
                         FROM jsonb_array_elements(p_changes -> 'changes') WITH ORDINALITY c(change, i)), '[]'))
           END
      FROM (SELECT CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END AS within) scope;
$$;

-- ===== sql/107_changes_digest.sql
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
