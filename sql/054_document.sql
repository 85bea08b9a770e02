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
