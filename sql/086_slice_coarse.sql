-- sms.slice_coarse(tenant, fsa, parts): the version of the latest change to each collection (or
-- top-level value) a slice reads: its marker row's version (sms.put_entry keeps it current). When
-- it is unchanged, nothing the slice covers changed either: a cheap first check before
-- sms.slice_fingerprint, one index lookup per part.
CREATE OR REPLACE FUNCTION sms.slice_coarse(p_tenant_id text, p_fsa_id text, p_parts jsonb) RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_coarse text;
BEGIN
    SELECT string_agg(coalesce(t.version::text, '-'), ',' ORDER BY p.i)
      INTO v_coarse
      FROM jsonb_array_elements(p_parts) WITH ORDINALITY p(part, i)
      LEFT JOIN sms.entries t
        ON t.tenant_id = p_tenant_id AND t.fsa_id = p_fsa_id
       AND t.collection = p.part ->> 'collection' AND NOT t.is_member AND t.member = '';
    RETURN v_coarse;
END;
$$;
