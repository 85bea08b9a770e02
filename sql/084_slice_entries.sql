-- sms.slice_entries(tenant, fsa, part): the member entries one parsed slice part covers (before
-- any `where`), read by a range scan of entries_folded_member within its collection. A SQL
-- function so that it is inlined into its callers.
CREATE OR REPLACE FUNCTION sms.slice_entries(p_tenant_id text, p_fsa_id text, p_part jsonb)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.member, e.value, e.version
      FROM sms.entries e
     WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id
       AND e.collection = p_part ->> 'collection' AND e.is_member
       AND lower(e.member) >= p_part ->> 'lo' AND lower(e.member) < p_part ->> 'hi'
       AND lower(e.member) LIKE p_part ->> 'pattern'
       AND (p_part ->> 'member' IS NULL OR e.member = p_part ->> 'member');
$$;
