-- Frozen copy of what revision 0024 installs (the sql/ files as they were), run as one script.

-- ===== sql/054_document.sql
-- sms.document(tenant, fsa): the full state as one jsonb value ({} for a state never written):
-- sms.document_text, parsed — half the time of building the value with jsonb_object_agg. STABLE:
-- inside one statement it reads the same snapshot as the statement, so it agrees with a version
-- read beside it.
CREATE OR REPLACE FUNCTION sms.document(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN sms.document_text(p_tenant_id, p_fsa_id)::jsonb;
END;
$$;

-- ===== sql/054_document_text.sql
-- sms.document_text(tenant, fsa): the full state as JSON text ({} for a state never written), as
-- GET /state sends it. Assembled as text from its entries in one index scan: each stored value is
-- JSON already, so nothing is built as jsonb on the way (jsonb_object_agg sorts and de-duplicates
-- every object's keys, to have them printed again: three times the time at 1 MB). Keys come in
-- byte order, collections then each one's members: the same version is always the same text.
-- STABLE: inside one statement it reads the same snapshot as the statement.
CREATE OR REPLACE FUNCTION sms.document_text(p_tenant_id text, p_fsa_id text) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_document text;
BEGIN
    SELECT '{' || coalesce(string_agg(to_json(collection)::text || ':'
                                      || CASE WHEN jsonb_typeof(top) = 'object' THEN '{' || coalesce(members, '') || '}'
                                              ELSE coalesce(top::text, 'null') END,
                                      ',' ORDER BY collection), '') || '}'
      INTO v_document
      FROM (SELECT collection,
                   (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                   string_agg(to_json(member)::text || ':' || value::text, ',' ORDER BY member)
                       FILTER (WHERE is_member) AS members
              FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
             GROUP BY collection) c;
    RETURN v_document;
END;
$$;

-- ===== sql/103_document_at.sql
-- sms.document_at(tenant, fsa, version): the full state exactly as it was at a version (time
-- travel), as one jsonb value: sms.document_at_text, parsed. SM010 for a version the state never
-- had.
CREATE OR REPLACE FUNCTION sms.document_at(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN sms.document_at_text(p_tenant_id, p_fsa_id, p_version)::jsonb;
END;
$$;

-- ===== sql/103_document_at_text.sql
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
