-- sms.collection_value(tenant, fsa, collection): a top-level object assembled from its members.
CREATE OR REPLACE FUNCTION sms.collection_value(p_tenant_id text, p_fsa_id text, p_collection text)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_value jsonb;
BEGIN
    SELECT coalesce(jsonb_object_agg(member, value), '{}')
      INTO v_value
      FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection AND is_member;
    RETURN v_value;
END;
$$;
