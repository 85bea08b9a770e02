-- sms.slice_entries(tenant, fsa, part): the member entries one parsed slice part covers (before
-- any `where`, sms.part_covers), read by a range scan of entries_folded_member within its
-- collection. Readers that order, cut or count what a part covers scan sms.entries with
-- sms.part_covers themselves, in one statement, rather than read this function's result.
CREATE OR REPLACE FUNCTION sms.slice_entries(p_tenant_id text, p_fsa_id text, p_part jsonb)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT e.member, e.value, e.version
      FROM sms.entries e
     WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id
       AND sms.part_covers(p_part, e.collection, e.is_member, e.member);
END;
$$;
