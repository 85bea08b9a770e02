-- sms.current_version(tenant, fsa): the state's version, 0 for a state never written.
CREATE OR REPLACE FUNCTION sms.current_version(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
END;
$$;
