-- sms.value_at(tenant, fsa, keys, version): the value at a path at a version (NULL: absent), from
-- the one or two entries on the path (a whole collection only when the path names it).
CREATE OR REPLACE FUNCTION sms.value_at(p_tenant_id text, p_fsa_id text, p_keys text[], p_version bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_top jsonb := sms.entry_at(p_tenant_id, p_fsa_id, p_keys[1], false, '', p_version);
BEGIN
    IF v_top IS NULL OR jsonb_typeof(v_top) <> 'object' THEN
        RETURN v_top #> p_keys[2:];
    ELSIF cardinality(p_keys) > 1 THEN
        RETURN sms.entry_at(p_tenant_id, p_fsa_id, p_keys[1], true, p_keys[2], p_version) #> p_keys[3:];
    END IF;
    RETURN (SELECT coalesce(jsonb_object_agg(member, value), '{}')
              FROM sms.entries_at(p_tenant_id, p_fsa_id, p_version)
             WHERE collection = p_keys[1] AND is_member);
END;
$$;
