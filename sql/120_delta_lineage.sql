-- sms.delta_lineage: one row per lineage (per tenant): the states it touched, its actors, how
-- many deltas, first and last time, and the paths touched. Filtering on tenant_id and
-- lineage_id is an index scan (deltas_by_lineage).
CREATE OR REPLACE VIEW sms.delta_lineage AS
SELECT d.tenant_id,
       d.lineage_id,
       array_agg(DISTINCT d.fsa_id ORDER BY d.fsa_id)                                   AS states,
       array_agg(DISTINCT d.actor ORDER BY d.actor) FILTER (WHERE d.actor IS NOT NULL)  AS actors,
       count(DISTINCT (d.fsa_id, d.version))                                            AS deltas,
       min(d.created_at)                                                                AS first_at,
       max(d.created_at)                                                                AS last_at,
       array_agg(DISTINCT p.path ORDER BY p.path)                                       AS paths
  FROM sms.deltas d
 CROSS JOIN LATERAL unnest(d.paths) p(path)
 WHERE d.lineage_id IS NOT NULL
 GROUP BY d.tenant_id, d.lineage_id;
