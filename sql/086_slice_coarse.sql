-- sms.slice_coarse(tenant, fsa, collections): for each collection (or top-level value) a slice
-- reads, from a JSON array of their names, its marker row's version, which moves with every
-- transaction that changes one of its members (sms.write_op). When it is unchanged, nothing the
-- slice covers changed either: a cheap first check before sms.slice_fingerprint, one index lookup
-- per collection.
CREATE OR REPLACE FUNCTION sms.slice_coarse(p_tenant_id text, p_fsa_id text, p_collections jsonb) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT string_agg(coalesce((SELECT t.version FROM sms.entries t
                                         WHERE t.tenant_id = p_tenant_id AND t.fsa_id = p_fsa_id
                                           AND t.collection = c.name AND NOT t.is_member AND t.member = '')::text, '-'),
                              ',' ORDER BY c.i)
              FROM jsonb_array_elements_text(p_collections) WITH ORDINALITY c(name, i));
END;
$$;
