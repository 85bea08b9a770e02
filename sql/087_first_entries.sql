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
