-- ===== sql/016_entry_history_recent.sql
-- Index for slices in order of recent change: a collection's member history, newest first and by
-- key within a version, exactly the order such a slice returns; walked by sms.recent_entries. The
-- history is append-only, so this costs one index entry per change.
CREATE INDEX entry_history_recent
    ON sms.entry_history (tenant_id, fsa_id, collection, version DESC, lower(member), member)
 WHERE is_member;

-- ===== sql/086_recent_entries.sql
-- sms.recent_entries(tenant, fsa, part, path, where, k): the first k entries of one parsed slice
-- part by most recent change (version descending, then key), as sms.first_entries orders them.
-- For a whole collection or key family it walks the collection's entry history in that order
-- (entry_history_recent) and keeps each matching member whose entry that change wrote last: cost
-- ∝ the history walked, usually about k rows. The walk gives up for a sort of every candidate
-- when it has walked as many rows as the family has members (a few members changed over and
-- over), and when the history ends first (entries written before history was kept are older than
-- all of it); so it never costs much more than that sort.
CREATE OR REPLACE FUNCTION sms.recent_entries(p_tenant_id text, p_fsa_id text, p_part jsonb, p_path text[],
                                              p_where jsonpath, p_k integer)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_budget   bigint;
    v_members  text[] := '{}';  -- what the walk found, in the slice's order
    v_values   jsonb[] := '{}';
    v_versions bigint[] := '{}';
    v_row      record;
    v_value    jsonb;
BEGIN
    IF p_k IS NOT NULL AND p_part ->> 'family' IS NOT NULL THEN
        SELECT c.members + p_k INTO v_budget FROM sms.member_counts c
         WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
           AND c.collection = p_part ->> 'collection' AND c.family = p_part ->> 'family';
    END IF;
    FOR v_row IN
        SELECT h.member, h.version FROM sms.entry_history h
         WHERE v_budget IS NOT NULL
           AND h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = p_part ->> 'collection'
           AND h.is_member
         ORDER BY h.version DESC, lower(h.member), h.member
    LOOP
        EXIT WHEN cardinality(v_members) >= p_k;
        v_budget := v_budget - 1;
        EXIT WHEN v_budget < 0;
        CONTINUE WHEN NOT (lower(v_row.member COLLATE "C") >= p_part ->> 'lo'
                           AND lower(v_row.member COLLATE "C") < p_part ->> 'hi'
                           AND lower(v_row.member COLLATE "C") LIKE p_part ->> 'pattern');
        SELECT e.value INTO v_value FROM sms.entries e
         WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.collection = p_part ->> 'collection'
           AND e.is_member AND e.member = v_row.member AND e.version = v_row.version;
        CONTINUE WHEN NOT FOUND OR v_value #> p_path IS NULL
                   OR (p_where IS NOT NULL AND NOT jsonb_path_exists(v_value, p_where, '{}', true));
        v_members := array_append(v_members, v_row.member);
        v_values := array_append(v_values, v_value);
        v_versions := array_append(v_versions, v_row.version);
    END LOOP;
    IF v_budget >= 0 AND cardinality(v_members) >= p_k THEN
        RETURN QUERY SELECT * FROM unnest(v_members, v_values, v_versions);
        RETURN;
    END IF;
    RETURN QUERY
        SELECT s.member, s.value, s.version
          FROM sms.slice_entries(p_tenant_id, p_fsa_id, p_part) s
         WHERE s.value #> p_path IS NOT NULL
           AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
         ORDER BY s.version DESC, lower(s.member COLLATE "C"), s.member COLLATE "C"
         LIMIT p_k;
END;
$$;

-- ===== sql/087_first_entries.sql
-- sms.first_entries(tenant, fsa, part, path, where, order, k): the first k entries of one parsed
-- slice part that hold `path` and pass `where`, by key (folded, as globs match, then exact) or most
-- recent change first (sms.recent_entries); all of them when k is NULL. By key, they are read in
-- the order of entries_folded_member and the scan stops after k: cost ∝ k (plus the entries
-- `where` skips), not ∝ the matches.
CREATE OR REPLACE FUNCTION sms.first_entries(p_tenant_id text, p_fsa_id text, p_part jsonb, p_path text[],
                                             p_where jsonpath, p_order text, p_k integer)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    (SELECT s.member, s.value, s.version
       FROM sms.slice_entries(p_tenant_id, p_fsa_id, p_part) s
      WHERE p_order = 'key' AND s.value #> p_path IS NOT NULL
        AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
      ORDER BY lower(s.member COLLATE "C"), s.member COLLATE "C"
      LIMIT p_k)
    UNION ALL
    SELECT r.member, r.value, r.version
      FROM sms.recent_entries(p_tenant_id, p_fsa_id, p_part, p_path, p_where, p_k) r
     WHERE p_order = 'recent';
$$;

