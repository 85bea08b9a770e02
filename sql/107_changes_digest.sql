-- sms.changes_digest(tenant, fsa, since, slice, max_tokens): sms.changes_since as deterministic,
-- LLM-ready text within a token budget (tokens estimated as characters / 4): who changed the
-- state since `since`, in which lineages, then one line per changed path, old -> new.
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
        RETURN format('No changes to %s/%s%s since v%s (now v%s).', p_tenant_id, p_fsa_id,
                      CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END, p_since, v_changes -> 'version');
    END IF;
    v_text := format('Changes to %s/%s%s since v%s (now v%s): %s deltas by %s', p_tenant_id, p_fsa_id,
                     CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END, p_since,
                     v_changes -> 'version', v_changes -> 'deltas',
                     (SELECT string_agg(format('%s (%s)', key, value), ', ' ORDER BY value::integer DESC, key)
                        FROM jsonb_each(v_changes -> 'actors')));
    IF v_changes -> 'lineages' <> '{}' THEN
        v_text := v_text || format('; lineages %s', (SELECT string_agg(format('%s (%s)', key, value), ', '
                                                         ORDER BY value::integer DESC, key)
                                                       FROM jsonb_each(v_changes -> 'lineages')));
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
