-- sms.path_history: one row per changed path per delta: the state, version, time, actor, lineage,
-- operator and the path's new value after the delta (NULL when it was removed). For one path's
-- history with old values too, sms.path_changes reads it by index.
CREATE OR REPLACE VIEW sms.path_history AS
SELECT d.tenant_id,
       d.fsa_id,
       d.version,
       d.created_at,
       d.actor,
       d.lineage_id,
       sms.format_path(k.keys)           AS path,
       '$' || (o.op ->> 'op')             AS operator,
       CASE WHEN cardinality(k.keys) > 1 THEN h.value #> k.keys[3:]
            WHEN jsonb_typeof(h.value) = 'object' THEN sms.collection_value(d.tenant_id, d.fsa_id, k.keys[1])
            ELSE h.value END              AS new_value
  FROM sms.deltas d
 CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
 CROSS JOIN LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(o.op -> 'path'))) k(keys)
  LEFT JOIN sms.entry_history h
         ON h.tenant_id = d.tenant_id AND h.fsa_id = d.fsa_id AND h.collection = k.keys[1]
        AND h.is_member = (cardinality(k.keys) > 1) AND h.member = coalesce(k.keys[2], '')
        AND h.version = d.version;
