-- sms.slice_fingerprint(tenant, fsa, parts): changes whenever anything a slice covers changes.
-- Per part: the count and the highest version of its candidate entries (an insert raises the
-- highest version, a delete lowers the count, an update raises the version), and the version of
-- the top-level value when it is not an object.
CREATE OR REPLACE FUNCTION sms.slice_fingerprint(p_tenant_id text, p_fsa_id text, p_parts jsonb)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT md5(string_agg(concat_ws(':', f.n, f.v, CASE WHEN jsonb_typeof(t.value) <> 'object' THEN t.version END),
                          ',' ORDER BY p.i))
      FROM jsonb_array_elements(p_parts) WITH ORDINALITY p(part, i)
     CROSS JOIN LATERAL (SELECT count(*) AS n, max(s.version) AS v
                           FROM sms.slice_entries(p_tenant_id, p_fsa_id, p.part) s) f
      LEFT JOIN sms.entries t
        ON t.tenant_id = p_tenant_id AND t.fsa_id = p_fsa_id
       AND t.collection = p.part ->> 'collection' AND NOT t.is_member;
$$;
