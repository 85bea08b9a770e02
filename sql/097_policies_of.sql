-- sms.policies_of(tenant, fsa): {"rules": [the state's own rules], "defaults": [the tenant's]},
-- each in the order they were set. With fsa NULL, "rules" are the tenant's defaults alone.
CREATE OR REPLACE FUNCTION sms.policies_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'rules', coalesce((SELECT jsonb_agg(rule ORDER BY rule_no) FROM sms.policies
                            WHERE tenant_id = p_tenant_id AND fsa_id = coalesce(p_fsa_id, '')), '[]'),
        'defaults', coalesce((SELECT jsonb_agg(rule ORDER BY rule_no) FROM sms.policies
                               WHERE tenant_id = p_tenant_id AND fsa_id = '' AND p_fsa_id IS NOT NULL), '[]'));
END;
$$;
