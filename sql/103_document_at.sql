-- sms.document_at(tenant, fsa, version): the full state exactly as it was at a version (time
-- travel), assembled like sms.document from sms.entries_at. SM010 for a version the state never
-- had.
CREATE OR REPLACE FUNCTION sms.document_at(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_version);
    RETURN (
        SELECT coalesce(jsonb_object_agg(collection,
                   CASE WHEN jsonb_typeof(top) = 'object' THEN coalesce(members, '{}') ELSE top END), '{}')
          FROM (SELECT collection,
                       (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                       jsonb_object_agg(member, value) FILTER (WHERE is_member) AS members
                  FROM sms.entries_at(p_tenant_id, p_fsa_id, p_version)
                 GROUP BY collection) c
         WHERE top IS NOT NULL);
END;
$$;
