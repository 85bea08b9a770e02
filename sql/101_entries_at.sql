-- sms.entries_at(tenant, fsa, version): the state's entries as they were at a version: the latest
-- snapshot up to it, overlaid with the entry changes after that snapshot. Cost ∝ the state's size
-- plus at most sms.snapshot_every() versions of changes, however far back the version is.
CREATE OR REPLACE FUNCTION sms.entries_at(p_tenant_id text, p_fsa_id text, p_version bigint)
RETURNS TABLE (collection text, is_member boolean, member text, value jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    WITH snap AS (
        SELECT coalesce(max(version), 0) AS version FROM sms.snapshots
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version <= p_version
    ), recent AS (
        SELECT DISTINCT ON (h.collection, h.is_member, h.member) h.collection, h.is_member, h.member, h.value
          FROM sms.entry_history h, snap
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.version > snap.version AND h.version <= p_version
         ORDER BY h.collection, h.is_member, h.member, h.version DESC
    )
    SELECT r.collection, r.is_member, r.member, r.value FROM recent r WHERE r.value IS NOT NULL
    UNION ALL
    SELECT e.collection, e.is_member, e.member, e.value
      FROM sms.snapshot_entries e, snap
     WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.version = snap.version
       AND NOT EXISTS (SELECT FROM recent r
                        WHERE r.collection = e.collection AND r.is_member = e.is_member AND r.member = e.member);
END;
$$;
