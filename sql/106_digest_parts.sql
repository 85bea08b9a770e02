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
