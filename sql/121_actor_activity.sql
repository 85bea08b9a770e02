-- sms.actor_activity: per actor and hour: how many deltas, on how many states, touching how many
-- distinct paths (paths of different states counted apart).
CREATE OR REPLACE VIEW sms.actor_activity AS
SELECT d.tenant_id,
       d.actor,
       date_trunc('hour', d.created_at)            AS hour,
       count(DISTINCT (d.fsa_id, d.version))       AS deltas,
       count(DISTINCT d.fsa_id)                    AS states,
       count(DISTINCT (d.fsa_id, p.path))          AS paths
  FROM sms.deltas d
 CROSS JOIN LATERAL unnest(d.paths) p(path)
 GROUP BY d.tenant_id, d.actor, date_trunc('hour', d.created_at);
