-- sms.changes_since(tenant, fsa, since, slice): what changed after version `since`, for an agent
-- coming back to a state: the number of deltas, the actors and lineages, and each changed path
-- once, with its value at `since` ("old", left out when it did not exist) and now ("new", left
-- out when removed), the last version that changed it and who did. With a slice spec, only the
-- changes that touch the slice. Cost ∝ the deltas since `since`.
CREATE OR REPLACE FUNCTION sms.changes_since(p_tenant_id text, p_fsa_id text, p_since bigint, p_slice text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := CASE WHEN p_slice IS NOT NULL
                            THEN sms.parse_slice(p_slice, sms.aliases_of(p_tenant_id, p_fsa_id)) END;
    v_version bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    v_ops     jsonb;
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_since);
    -- the ops first, then the values they changed: a statement that reads a table calls no
    -- function that reads one (a sharded database runs it on the tenant's node whole)
    SELECT coalesce(jsonb_agg(jsonb_build_array(d.version, coalesce(d.actor, '(anonymous)'), d.lineage_id,
                                                o.op -> 'path')), '[]')
      INTO v_ops
      FROM sms.deltas d
     CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
     WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
       AND (v_parts IS NULL OR sms.touches_slice(jsonb_build_array(o.op), v_parts));
    RETURN (
        WITH ops AS (
            SELECT (op ->> 0)::bigint AS version, op ->> 1 AS actor, op ->> 2 AS lineage_id,
                   ARRAY(SELECT jsonb_array_elements_text(op -> 3)) AS keys
              FROM jsonb_array_elements(v_ops) op
        ), paths AS (
            SELECT keys, max(version) AS last_version, array_agg(DISTINCT actor ORDER BY actor) AS actors
              FROM ops GROUP BY keys
        )
        SELECT jsonb_build_object(
            'since', p_since, 'version', v_version,
            'deltas', (SELECT count(DISTINCT version) FROM ops),
            'actors', coalesce((SELECT jsonb_object_agg(actor, n) FROM (
                                    SELECT actor, count(DISTINCT version) AS n FROM ops GROUP BY actor) a), '{}'),
            'lineages', coalesce((SELECT jsonb_object_agg(lineage_id, n) FROM (
                                      SELECT lineage_id, count(DISTINCT version) AS n FROM ops
                                       WHERE lineage_id IS NOT NULL GROUP BY lineage_id) l), '{}'),
            'changes', coalesce((
                SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                           'path', sms.format_path(p.keys), 'version', p.last_version, 'actors', to_jsonb(p.actors)))
                       || CASE WHEN old IS NULL THEN '{}' ELSE jsonb_build_object('old', old) END
                       || CASE WHEN new IS NULL THEN '{}' ELSE jsonb_build_object('new', new) END
                       ORDER BY sms.format_path(p.keys))
                  FROM paths p,
                       LATERAL sms.value_at(p_tenant_id, p_fsa_id, p.keys, p_since) old,
                       LATERAL sms.read_path(p_tenant_id, p_fsa_id, p.keys) new), '[]'))
          FROM (SELECT 1) one);
END;
$$;
