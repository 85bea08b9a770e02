-- sms.path_history: one row per changed path per delta: the state, version, time, actor, lineage,
-- operator and the path's value after the delta (NULL when it was removed). That value is read as
-- sms.value_at reads it, from the entries on the path — the collection's own row, then the member
-- on the path, or every member for a whole collection — each as of the delta's version: its latest
-- change in sms.entry_history up to it, or else its value in the latest snapshot up to it. The
-- view reads those tables itself rather than call sms.value_at on each delta: on Citus a statement
-- that reads a table may not call a function that reads one. For one path's history with old
-- values too, sms.path_changes reads it by index.
CREATE OR REPLACE VIEW sms.path_history AS
SELECT d.tenant_id,
       d.fsa_id,
       d.version,
       d.created_at,
       d.actor,
       d.lineage_id,
       sms.format_path(d.keys)           AS path,
       '$' || (d.op ->> 'op')             AS operator,
       CASE WHEN jsonb_typeof(top.value) IS DISTINCT FROM 'object' THEN top.value #> d.keys[2:]
            WHEN cardinality(d.keys) > 1 THEN mem.value #> d.keys[3:]
            ELSE whole.value
       END                                AS new_value
  -- the ops in a subquery of their own: Citus takes no correlated subquery beside a set-returning
  -- function
  FROM (SELECT d.tenant_id, d.fsa_id, d.version, d.created_at, d.actor, d.lineage_id, o.op,
               ARRAY(SELECT jsonb_array_elements_text(o.op -> 'path')) AS keys
          FROM sms.deltas d
         CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)) d
 CROSS JOIN LATERAL (SELECT coalesce(max(s.version), 0) AS version FROM sms.snapshots s
                      WHERE s.tenant_id = d.tenant_id AND s.fsa_id = d.fsa_id AND s.version <= d.version) snap
 -- the collection's own row: its value, or the marker of an object
 LEFT JOIN LATERAL (
     SELECT e.value
       FROM ((SELECT h.value, 1 AS source FROM sms.entry_history h
               WHERE h.tenant_id = d.tenant_id AND h.fsa_id = d.fsa_id AND h.collection = d.keys[1]
                 AND NOT h.is_member AND h.member = '' AND h.version <= d.version
               ORDER BY h.version DESC LIMIT 1)
             UNION ALL
             SELECT s.value, 2 FROM sms.snapshot_entries s
              WHERE s.tenant_id = d.tenant_id AND s.fsa_id = d.fsa_id AND s.version = snap.version
                AND s.collection = d.keys[1] AND NOT s.is_member AND s.member = '') e
      ORDER BY e.source
      LIMIT 1) top ON true
 -- the member on the path
 LEFT JOIN LATERAL (
     SELECT e.value
       FROM ((SELECT h.value, 1 AS source FROM sms.entry_history h
               WHERE h.tenant_id = d.tenant_id AND h.fsa_id = d.fsa_id AND h.collection = d.keys[1]
                 AND h.is_member AND h.member = d.keys[2] AND h.version <= d.version
               ORDER BY h.version DESC LIMIT 1)
             UNION ALL
             SELECT s.value, 2 FROM sms.snapshot_entries s
              WHERE s.tenant_id = d.tenant_id AND s.fsa_id = d.fsa_id AND s.version = snap.version
                AND s.collection = d.keys[1] AND s.is_member AND s.member = d.keys[2]) e
      WHERE cardinality(d.keys) > 1 AND jsonb_typeof(top.value) = 'object'
      ORDER BY e.source
      LIMIT 1) mem ON true
 -- every member, for a path that is a whole collection: the snapshot's, overlaid with the changes
 -- after it
 LEFT JOIN LATERAL (
     SELECT coalesce(jsonb_object_agg(m.member, m.value), '{}') AS value
       FROM (SELECT r.member, r.value
               FROM (SELECT DISTINCT ON (h.member) h.member, h.value FROM sms.entry_history h
                      WHERE h.tenant_id = d.tenant_id AND h.fsa_id = d.fsa_id AND h.collection = d.keys[1]
                        AND h.is_member AND h.version > snap.version AND h.version <= d.version
                      ORDER BY h.member, h.version DESC) r
              WHERE r.value IS NOT NULL
             UNION ALL
             SELECT s.member, s.value FROM sms.snapshot_entries s
              WHERE s.tenant_id = d.tenant_id AND s.fsa_id = d.fsa_id AND s.version = snap.version
                AND s.collection = d.keys[1] AND s.is_member
                AND NOT EXISTS (SELECT FROM sms.entry_history h
                                 WHERE h.tenant_id = d.tenant_id AND h.fsa_id = d.fsa_id
                                   AND h.collection = d.keys[1] AND h.is_member AND h.member = s.member
                                   AND h.version > snap.version AND h.version <= d.version)) m
      WHERE cardinality(d.keys) = 1 AND jsonb_typeof(top.value) = 'object') whole ON true;
