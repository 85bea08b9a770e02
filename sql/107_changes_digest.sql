-- sms.changes_digest(tenant, fsa, since, slice, max_tokens): sms.changes_since as deterministic,
-- LLM-ready text within a token budget (tokens estimated as characters / 4): who changed the
-- state since `since` (the five most active, and how many more), in which lineages, then one
-- line per changed path, old -> new, as many as the budget holds.
CREATE OR REPLACE FUNCTION sms.changes_digest(p_tenant_id text, p_fsa_id text, p_since bigint,
                                              p_slice text DEFAULT NULL, p_max_tokens integer DEFAULT 300)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_changes jsonb := sms.changes_since(p_tenant_id, p_fsa_id, p_since, p_slice);
    v_budget  integer := greatest(p_max_tokens, 20) * 4;
    v_text    text;
    v_line    text;
    v_left    integer;
    v_change  jsonb;
BEGIN
    IF (v_changes ->> 'deltas')::integer = 0 THEN
        RETURN sms.clip(format('No changes to %s/%s%s since v%s (now v%s).', p_tenant_id, p_fsa_id,
                               CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END, p_since,
                               v_changes -> 'version'), v_budget);
    END IF;
    -- the header's essentials first; who and in which lineages only where the budget allows,
    -- always keeping room (40 characters) to say how many paths were left out
    v_text := format('Changes to %s/%s%s v%s -> v%s: %s deltas', p_tenant_id, p_fsa_id,
                     CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END, p_since,
                     v_changes -> 'version', v_changes -> 'deltas');
    IF length(v_text) + 40 > v_budget THEN
        RETURN sms.clip(v_text, v_budget);
    END IF;
    v_line := ' by ' || sms.top_counts(v_changes -> 'actors', 5);
    IF length(v_text) + length(v_line) + 40 <= v_budget THEN
        v_text := v_text || v_line;
    END IF;
    IF v_changes -> 'lineages' <> '{}' THEN
        v_line := '; lineages ' || sms.top_counts(v_changes -> 'lineages', 5);
        IF length(v_text) + length(v_line) + 40 <= v_budget THEN
            v_text := v_text || v_line;
        END IF;
    END IF;
    v_left := jsonb_array_length(v_changes -> 'changes');
    FOR v_change IN SELECT value FROM jsonb_array_elements(v_changes -> 'changes') LOOP
        v_line := format(E'\n- %s: %s -> %s (v%s, %s)', v_change ->> 'path',
                         coalesce(sms.brief(v_change -> 'old'), '(absent)'), coalesce(sms.brief(v_change -> 'new'), '(removed)'),
                         v_change -> 'version', (SELECT string_agg(a, ', ') FROM jsonb_array_elements_text(v_change -> 'actors') a));
        IF length(v_text) + length(v_line) + 40 > v_budget THEN
            RETURN v_text || format(E'\n… %s more changed paths not shown', v_left);
        END IF;
        v_text := v_text || v_line;
        v_left := v_left - 1;
    END LOOP;
    RETURN v_text;
END;
$$;
