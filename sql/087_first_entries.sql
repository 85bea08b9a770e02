-- sms.first_entries(tenant, fsa, part, path, where, order, k): the first k entries of one parsed
-- slice part that hold `path` and pass `where`, by key (folded, as globs match, then exact) or most
-- recent change first (sms.recent_entries); all of them when k is NULL. By key, they are read in
-- the order of entries_folded_member and the scan stops after k: cost ∝ k (plus the entries
-- `where` skips), not ∝ the matches.
CREATE OR REPLACE FUNCTION sms.first_entries(p_tenant_id text, p_fsa_id text, p_part jsonb, p_path text[],
                                             p_where jsonpath, p_order text, p_k integer)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF p_order = 'key' THEN
        RETURN QUERY
        SELECT e.member, e.value, e.version
          FROM sms.entries e
         WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id
           AND sms.part_covers(p_part, e.collection, e.is_member, e.member)
           AND e.value #> p_path IS NOT NULL
           AND (p_where IS NULL OR jsonb_path_exists(e.value, p_where, '{}', true))
         ORDER BY lower(e.member), e.member
         LIMIT p_k;
    ELSIF p_order = 'recent' THEN
        RETURN QUERY SELECT r.member, r.value, r.version
                       FROM sms.recent_entries(p_tenant_id, p_fsa_id, p_part, p_path, p_where, p_k) r;
    END IF;
END;
$$;
