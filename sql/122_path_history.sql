-- sms.path_history: one row per changed path per delta: the state, version, time, actor, lineage,
-- operator and the path's value after the delta (sms.value_at; NULL when it was removed). For one
-- path's history with old values too, sms.path_changes reads it by index.
CREATE OR REPLACE VIEW sms.path_history AS
SELECT d.tenant_id,
       d.fsa_id,
       d.version,
       d.created_at,
       d.actor,
       d.lineage_id,
       sms.format_path(k.keys)           AS path,
       '$' || (o.op ->> 'op')             AS operator,
       sms.value_at(d.tenant_id, d.fsa_id, k.keys, d.version) AS new_value
  FROM sms.deltas d
 CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
 CROSS JOIN LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(o.op -> 'path'))) k(keys);
