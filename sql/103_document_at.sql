-- sms.document_at(tenant, fsa, version): the full state exactly as it was at a version (time
-- travel), as one jsonb value: sms.document_at_text, parsed. SM010 for a version the state never
-- had.
CREATE OR REPLACE FUNCTION sms.document_at(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN sms.document_at_text(p_tenant_id, p_fsa_id, p_version)::jsonb;
END;
$$;
