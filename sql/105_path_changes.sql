-- sms.path_changes(tenant, fsa, path, limit): who changed a path, when, from what to what, newest
-- first: the history of the entry holding the path (an index scan of sms.entry_history), kept
-- where the value at the path differs from the one before, joined to the log for actor and
-- lineage. A path naming a whole collection lists its members' changes.
CREATE OR REPLACE FUNCTION sms.path_changes(p_tenant_id text, p_fsa_id text, p_path text, p_limit integer DEFAULT 100)
RETURNS TABLE (version bigint, path text, old_value jsonb, new_value jsonb, existed boolean, exists_now boolean,
               actor text, lineage_id text, trace_id text, created_at timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_keys   text[] := sms.parse_path(p_path);
    v_whole  boolean := cardinality(v_keys) = 1;
    v_low    text := CASE WHEN v_whole THEN '' ELSE v_keys[2] END;
    v_high   text := CASE WHEN v_whole THEN repeat(chr(1114111), 8) ELSE v_keys[2] END;
    v_marked bigint[];  -- a whole collection: the versions its marker row changed at ...
    v_then   jsonb[];   -- ... and the collection as it was at each
BEGIN
    IF v_whole THEN
        -- first, apart: a statement that reads a table calls no function that reads one (a sharded
        -- database runs it on the tenant's node whole)
        SELECT array_agg(h.version) INTO v_marked
          FROM sms.entry_history h
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = v_keys[1]
           AND NOT h.is_member AND h.member = '' AND jsonb_typeof(h.value) = 'object';
        SELECT array_agg(sms.value_at(p_tenant_id, p_fsa_id, v_keys, v) ORDER BY n) INTO v_then
          FROM unnest(v_marked) WITH ORDINALITY m(v, n);
    END IF;
    RETURN QUERY
    WITH changes AS (
        -- the top-level row (the value itself, or the marker of an object) ...
        SELECT h.version, h.is_member, h.member,
               CASE WHEN NOT v_whole THEN h.value #> v_keys[2:]
                    WHEN jsonb_typeof(h.value) = 'object'   -- the marker: the collection as it was then
                    THEN v_then[array_position(v_marked, h.version)]
                    ELSE h.value END AS value
          FROM sms.entry_history h
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = v_keys[1]
           AND NOT h.is_member AND h.member = ''
        UNION ALL
        -- ... and the member on the path (every member for a whole collection): key ranges, so
        -- that both cases are index range scans
        SELECT h.version, h.is_member, h.member, CASE WHEN v_whole THEN h.value ELSE h.value #> v_keys[3:] END
          FROM sms.entry_history h
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = v_keys[1]
           AND h.is_member AND h.member >= v_low AND h.member <= v_high
    ), steps AS (
        SELECT c.version, c.is_member, c.member, c.value AS new_value, lag(c.value) OVER w AS old_value
          FROM changes c
        WINDOW w AS (PARTITION BY c.is_member, c.member ORDER BY c.version)
    )
    SELECT s.version,
           CASE WHEN v_whole AND s.is_member THEN sms.format_path(ARRAY[v_keys[1], s.member]) ELSE p_path END,
           s.old_value, s.new_value, s.old_value IS NOT NULL, s.new_value IS NOT NULL,
           d.actor, d.lineage_id, d.trace_id, d.created_at
      FROM steps s
      JOIN sms.deltas d ON d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version = s.version
     WHERE s.new_value IS DISTINCT FROM s.old_value
       -- a collection's own marker row says only "this is an object"
       AND NOT (v_whole AND NOT s.is_member AND jsonb_typeof(s.new_value) = 'object'
                AND jsonb_typeof(s.old_value) = 'object')
     ORDER BY s.version DESC, 2
     LIMIT p_limit;
END;
$$;
