-- sms.read_path(tenant, fsa, keys): the current value at a path, NULL when it does not exist.
-- Reads one or two entries (a whole collection only when the path is the collection itself).
CREATE OR REPLACE FUNCTION sms.read_path(p_tenant_id text, p_fsa_id text, p_keys text[])
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_top    jsonb;
    v_member jsonb;
BEGIN
    SELECT value INTO v_top FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1] AND NOT is_member;
    IF v_top IS NULL OR jsonb_typeof(v_top) <> 'object' THEN
        RETURN v_top #> p_keys[2:];
    ELSIF cardinality(p_keys) = 1 THEN
        RETURN sms.collection_value(p_tenant_id, p_fsa_id, p_keys[1]);
    END IF;
    SELECT value INTO v_member FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1]
       AND is_member AND member = p_keys[2];
    RETURN v_member #> p_keys[3:];
END;
$$;
