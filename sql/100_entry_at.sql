-- sms.entry_at(tenant, fsa, collection, is_member, member, version): one entry's value at a
-- version (NULL: absent): its latest change up to that version, or else its value in the latest
-- snapshot up to it. Index probes only.
CREATE OR REPLACE FUNCTION sms.entry_at(p_tenant_id text, p_fsa_id text, p_collection text, p_is_member boolean,
                                        p_member text, p_version bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_value jsonb;
BEGIN
    SELECT CASE WHEN h.found THEN h.value ELSE s.value END
      INTO v_value
      FROM (SELECT true AS found, value FROM sms.entry_history
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
               AND is_member = p_is_member AND member = p_member AND version <= p_version
             ORDER BY version DESC LIMIT 1) h
      FULL JOIN (SELECT e.value FROM sms.snapshot_entries e
                  WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.collection = p_collection
                    AND e.is_member = p_is_member AND e.member = p_member
                    AND e.version = (SELECT max(version) FROM sms.snapshots
                                      WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version <= p_version)) s
        ON true;
    RETURN v_value;
END;
$$;
