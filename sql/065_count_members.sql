-- sms.count_members(tenant, fsa, collection, version): counts one collection's members afresh into
-- sms.member_counts, as of `version`: after a whole top-level key was set or removed (sms.write_op)
-- and when a migration fills the table. Cost ∝ the collection's members.
CREATE OR REPLACE FUNCTION sms.count_members(p_tenant_id text, p_fsa_id text, p_collection text, p_version bigint)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_count record;
BEGIN
    DELETE FROM sms.member_counts
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection;
    -- row by row, not INSERT ... SELECT (sql/057_take_snapshot.sql says why): a row per key family
    FOR v_count IN
        SELECT c.family, sum(c.n) AS members,
               coalesce(jsonb_object_agg(c.status, c.n) FILTER (WHERE c.status IS NOT NULL), '{}') AS statuses
          FROM (SELECT f.family, sms.entry_status(e.value) AS status, count(*) AS n
                  FROM sms.entries e
                 CROSS JOIN LATERAL (VALUES (''), (sms.key_family(e.member))) f(family)
                 WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.collection = p_collection
                   AND e.is_member AND f.family IS NOT NULL
                 GROUP BY 1, 2) c
         GROUP BY c.family
    LOOP
        INSERT INTO sms.member_counts (tenant_id, fsa_id, collection, family, members, statuses, version)
        VALUES (p_tenant_id, p_fsa_id, p_collection, v_count.family, v_count.members, v_count.statuses, p_version);
    END LOOP;
END;
$$;
