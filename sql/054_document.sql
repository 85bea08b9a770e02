-- sms.document(tenant, fsa): the full state as one JSON object ({} for a state never written),
-- assembled from its entries in one index scan. STABLE: inside one statement it reads the same
-- snapshot as the statement, so it agrees with a version read beside it.
CREATE OR REPLACE FUNCTION sms.document(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_document jsonb;
BEGIN
    -- SELECT … INTO, not RETURN (SELECT …): the document is not copied once more on its way out
    SELECT coalesce(jsonb_object_agg(collection,
               CASE WHEN jsonb_typeof(top) = 'object' THEN coalesce(members, '{}') ELSE top END), '{}')
      INTO v_document
      FROM (SELECT collection,
                   (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                   jsonb_object_agg(member, value) FILTER (WHERE is_member) AS members
              FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
             GROUP BY collection) c;
    RETURN v_document;
END;
$$;
