-- sms.slice_fingerprint(tenant, fsa, parts): changes whenever anything a slice covers changes.
-- Per part: for a key family, its sms.member_counts row (count and latest change: one row,
-- however many members); for a whole collection, its count and the version of its marker row
-- (which moves with its members, sms.write_op); else the count and the highest version of its
-- candidate entries (an insert raises the highest version, a delete lowers the count, an update
-- raises the version). And the version of the top-level value when it is not an object.
CREATE OR REPLACE FUNCTION sms.slice_fingerprint(p_tenant_id text, p_fsa_id text, p_parts jsonb)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_print text;
BEGIN
    SELECT md5(string_agg(concat_ws(':',
                   CASE WHEN p.part ->> 'family' IS NOT NULL THEN
                       (SELECT concat_ws(':', c.members, CASE WHEN c.family = '' THEN t.version ELSE c.version END)
                          FROM sms.member_counts c
                         WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
                           AND c.collection = p.part ->> 'collection' AND c.family = p.part ->> 'family')
                   ELSE
                       (SELECT concat_ws(':', count(*), max(s.version))
                          FROM sms.entries s
                         WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id
                           AND sms.part_covers(p.part, s.collection, s.is_member, s.member))
                   END,
                   CASE WHEN jsonb_typeof(t.value) <> 'object' THEN t.version END),
               ',' ORDER BY p.i))
      INTO v_print
      FROM jsonb_array_elements(p_parts) WITH ORDINALITY p(part, i)
      LEFT JOIN sms.entries t
        ON t.tenant_id = p_tenant_id AND t.fsa_id = p_fsa_id
       AND t.collection = p.part ->> 'collection' AND NOT t.is_member;
    RETURN v_print;
END;
$$;
