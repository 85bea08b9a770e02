-- sms.aliases_of(tenant, fsa): the aliases of a state's slice specs, {"alias": "collection"}: the
-- defaults, overridden or extended by the state's own (sms.slice_aliases).
CREATE OR REPLACE FUNCTION sms.aliases_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN sms.default_aliases() || coalesce((SELECT jsonb_object_agg(a.alias, a.collection)
                                                FROM sms.slice_aliases a
                                               WHERE a.tenant_id = p_tenant_id AND a.fsa_id = p_fsa_id), '{}');
END;
$$;
