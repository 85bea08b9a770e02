-- sms.document_at_text(tenant, fsa, version): the full state as JSON text exactly as it was at a
-- version (time travel), assembled like sms.document_text from sms.entries_at: the same text
-- sms.document_text gave at that version. SM010 for a version the state never had.
CREATE OR REPLACE FUNCTION sms.document_at_text(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_document text;
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_version);
    SELECT '{' || coalesce(string_agg(to_json(collection)::text || ':'
                                      || CASE WHEN jsonb_typeof(top) = 'object' THEN '{' || coalesce(members, '') || '}'
                                              ELSE top::text END,
                                      ',' ORDER BY collection), '') || '}'
      INTO v_document
      FROM (SELECT collection,
                   (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                   string_agg(to_json(member)::text || ':' || value::text, ',' ORDER BY member)
                       FILTER (WHERE is_member) AS members
              FROM sms.entries_at(p_tenant_id, p_fsa_id, p_version)
             GROUP BY collection) c
     WHERE top IS NOT NULL;
    RETURN v_document;
END;
$$;
