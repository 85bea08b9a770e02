-- Frozen copy of what revision 0017 installs (the sql/ files as they were), run as one script.

-- ===== states.comments (sql/010_states.sql)
ALTER TABLE sms.states ADD COLUMN comments bigint NOT NULL DEFAULT 0;

-- ===== task_comments.comment_id (sql/018_task_comments.sql)
ALTER TABLE sms.task_comments ALTER COLUMN comment_id DROP IDENTITY;

-- ===== each state's comment counter starts at its last comment id
UPDATE sms.states s SET comments = c.last
  FROM (SELECT tenant_id, fsa_id, max(comment_id) AS last FROM sms.task_comments GROUP BY tenant_id, fsa_id) c
 WHERE s.tenant_id = c.tenant_id AND s.fsa_id = c.fsa_id;

-- ===== the append-only triggers, created again below with their table's name as argument
DROP TRIGGER deltas_append_only ON sms.deltas;
DROP TRIGGER deltas_no_truncate ON sms.deltas;
DROP TRIGGER entry_history_append_only ON sms.entry_history;
DROP TRIGGER entry_history_no_delete ON sms.entry_history;
DROP TRIGGER entry_history_no_truncate ON sms.entry_history;
DROP TRIGGER task_comments_append_only ON sms.task_comments;
DROP TRIGGER task_comments_no_truncate ON sms.task_comments;
DROP TRIGGER policy_changes_append_only ON sms.policy_changes;
DROP TRIGGER policy_changes_no_truncate ON sms.policy_changes;
DROP TRIGGER refusals_append_only ON sms.refusals;
DROP TRIGGER refusals_no_truncate ON sms.refusals;
DROP TRIGGER erasures_no_truncate ON sms.erasures;

-- ===== sql/014_deltas_append_only.sql
-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql. The one way through is an erasure (DESIGN §14): a DELETE of a state's rows in a
-- transaction that has recorded that erasure in sms.erasures (sms.erase_state, sms.compact) — of
-- any of its rows for a purge, of its log and history up to the compaction point for a
-- compaction. The service's role holds no DELETE on these tables and no privilege on
-- sms.erasures; anyone else (the owner in psql) must record the erasure in the same transaction
-- first, so nothing leaves a log unrecorded. An older record opens nothing: a record names the
-- transaction that wrote it (pg_current_xact_id()). Each trigger passes its table's name: on
-- Citus the trigger fires on a shard, whose own name (deltas_102234) is not the table's.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_table   text := TG_ARGV[0];
    v_through bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT e.through_version INTO v_through FROM sms.erasures e
         WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id AND e.tx_id = pg_current_xact_id()
           AND (e.action = 'purge' OR v_table IN ('deltas', 'entry_history'))
         ORDER BY e.through_version DESC NULLS FIRST
         LIMIT 1;
        IF FOUND AND (v_through IS NULL OR (to_jsonb(OLD) ->> 'version')::bigint <= v_through) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.%s is append-only: %s is not allowed', v_table, TG_OP);
END;
$$;

CREATE TRIGGER deltas_append_only
    BEFORE UPDATE OR DELETE ON sms.deltas
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('deltas');

CREATE TRIGGER deltas_no_truncate
    BEFORE TRUNCATE ON sms.deltas
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('deltas');

-- ===== sql/020_history_append_only.sql
-- entry_history and task_comments are append-only too (sms.refuse_log_change); an entry_history
-- row may only be rewritten by the delta that wrote it (sms.refuse_history_rewrite).
CREATE TRIGGER entry_history_append_only
    BEFORE UPDATE ON sms.entry_history
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_history_rewrite();

CREATE TRIGGER entry_history_no_delete
    BEFORE DELETE ON sms.entry_history
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('entry_history');

CREATE TRIGGER entry_history_no_truncate
    BEFORE TRUNCATE ON sms.entry_history
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('entry_history');

CREATE TRIGGER task_comments_append_only
    BEFORE UPDATE OR DELETE ON sms.task_comments
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('task_comments');

CREATE TRIGGER task_comments_no_truncate
    BEFORE TRUNCATE ON sms.task_comments
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('task_comments');

-- ===== sql/027_audit_append_only.sql
-- sms.policy_changes and sms.refusals are records for reports: append-only, like the delta log.
CREATE TRIGGER policy_changes_append_only
    BEFORE UPDATE OR DELETE ON sms.policy_changes
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('policy_changes');

CREATE TRIGGER policy_changes_no_truncate
    BEFORE TRUNCATE ON sms.policy_changes
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('policy_changes');

CREATE TRIGGER refusals_append_only
    BEFORE UPDATE OR DELETE ON sms.refusals
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('refusals');

CREATE TRIGGER refusals_no_truncate
    BEFORE TRUNCATE ON sms.refusals
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('refusals');

-- ===== erasures_no_truncate (sql/027_erasures_append_only.sql)
CREATE TRIGGER erasures_no_truncate
    BEFORE TRUNCATE ON sms.erasures
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('erasures');

-- ===== sql/051_collection_value.sql
-- sms.collection_value(tenant, fsa, collection): a top-level object assembled from its members.
CREATE OR REPLACE FUNCTION sms.collection_value(p_tenant_id text, p_fsa_id text, p_collection text)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_value jsonb;
BEGIN
    SELECT coalesce(jsonb_object_agg(member, value), '{}')
      INTO v_value
      FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection AND is_member;
    RETURN v_value;
END;
$$;

-- ===== sql/054_current_version.sql
-- sms.current_version(tenant, fsa): the state's version, 0 for a state never written.
CREATE OR REPLACE FUNCTION sms.current_version(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
END;
$$;

-- ===== sql/054_document.sql
-- sms.document(tenant, fsa): the full state as one JSON object ({} for a state never written),
-- assembled from its entries in one index scan. STABLE: inside one statement it reads the same
-- snapshot as the statement, so it agrees with a version read beside it.
CREATE OR REPLACE FUNCTION sms.document(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_document jsonb;
BEGIN
    -- SELECT … INTO, not RETURN (SELECT …): the document is not copied once more on its way out
    SELECT coalesce(jsonb_object_agg(collection,
               CASE WHEN jsonb_typeof(top) = 'object' THEN coalesce(members, '{}') ELSE top END), '{}')
      INTO v_document
      FROM (SELECT collection,
                   (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                   jsonb_object_agg(member, value) FILTER (WHERE is_member) AS members
              FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
             GROUP BY collection) c;
    RETURN v_document;
END;
$$;

-- ===== sql/057_take_snapshot.sql
-- sms.take_snapshot(tenant, fsa, version): saves the state's current entries as the snapshot at
-- `version` (the caller holds the state's lock, so the entries are exactly that version's).
CREATE OR REPLACE FUNCTION sms.take_snapshot(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_version)
    ON CONFLICT DO NOTHING;
    INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
    SELECT tenant_id, fsa_id, p_version, collection, is_member, member, value
      FROM sms.entries WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
    ON CONFLICT DO NOTHING;
END;
$$;

-- ===== sql/059_put_entry.sql
-- sms.put_entry(...): stores one entry's new value given its old one (NULL = absent): insert,
-- update, delete, or nothing when the value did not change; a change is recorded in
-- sms.entry_history, and a member's change in its collection's sms.member_counts. Returns the
-- change in entry count and content bytes (the size of the values' JSON text).
CREATE OR REPLACE FUNCTION sms.put_entry(p_tenant_id text, p_fsa_id text, p_collection text,
                                         p_is_member boolean, p_member text, p_old jsonb, p_new jsonb,
                                         p_version bigint, OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_was    text := sms.entry_status(p_old);
    v_is     text := sms.entry_status(p_new);
    v_family text;
BEGIN
    entry_delta := 0;
    byte_delta := coalesce(octet_length(p_new::text), 0) - coalesce(octet_length(p_old::text), 0);
    IF p_new IS NOT DISTINCT FROM p_old THEN
        byte_delta := 0;
    ELSIF p_old IS NULL THEN
        INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_new, p_version);
        entry_delta := 1;
    ELSIF p_new IS NULL THEN
        DELETE FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND is_member = p_is_member AND member = p_member;
        entry_delta := -1;
    ELSE
        UPDATE sms.entries SET value = p_new, version = p_version
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND is_member = p_is_member AND member = p_member;
    END IF;
    IF p_new IS DISTINCT FROM p_old AND p_is_member THEN
        -- the collection's marker row carries the version of its latest change (sms.slice_coarse)
        UPDATE sms.entries SET version = p_version
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND NOT is_member AND member = '' AND version < p_version;
        -- the counts of the member's key family, and of the whole collection when they change
        -- (the marker row above already has the collection's latest change): an INSERT … VALUES
        -- per row, which Citus can route with these variables (an INSERT … SELECT it cannot)
        FOREACH v_family IN ARRAY ARRAY[CASE WHEN entry_delta <> 0 OR v_was IS DISTINCT FROM v_is THEN '' END,
                                        sms.key_family(p_member)] LOOP
            CONTINUE WHEN v_family IS NULL;
            INSERT INTO sms.member_counts AS c (tenant_id, fsa_id, collection, family, members, statuses, version)
            VALUES (p_tenant_id, p_fsa_id, p_collection, v_family, entry_delta,
                    sms.tally(sms.tally('{}', v_was, -1), v_is, 1), p_version)
            ON CONFLICT (tenant_id, fsa_id, collection, family) DO UPDATE
               SET members = c.members + EXCLUDED.members,
                   statuses = sms.tally(sms.tally(c.statuses, v_was, -1), v_is, 1),
                   version = EXCLUDED.version;
        END LOOP;
    END IF;
    IF p_new IS DISTINCT FROM p_old THEN
        INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_version, p_new)
        ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = EXCLUDED.value;
    END IF;
END;
$$;

-- ===== sql/065_count_members.sql
-- sms.count_members(tenant, fsa, collection, version): counts one collection's members afresh into
-- sms.member_counts, as of `version`: after a whole top-level key was set or removed (sms.write_op)
-- and when a migration fills the table. Cost ∝ the collection's members.
CREATE OR REPLACE FUNCTION sms.count_members(p_tenant_id text, p_fsa_id text, p_collection text, p_version bigint)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM sms.member_counts
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection;
    INSERT INTO sms.member_counts (tenant_id, fsa_id, collection, family, members, statuses, version)
    SELECT p_tenant_id, p_fsa_id, p_collection, c.family, sum(c.n),
           coalesce(jsonb_object_agg(c.status, c.n) FILTER (WHERE c.status IS NOT NULL), '{}'), p_version
      FROM (SELECT f.family, sms.entry_status(e.value) AS status, count(*) AS n
              FROM sms.entries e
             CROSS JOIN LATERAL (VALUES (''), (sms.key_family(e.member))) f(family)
             WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.collection = p_collection
               AND e.is_member AND f.family IS NOT NULL
             GROUP BY 1, 2) c
     GROUP BY c.family;
END;
$$;

-- ===== sql/079_aliases_of.sql
-- sms.aliases_of(tenant, fsa): the aliases of a state's slice specs, {"alias": "collection"}: the
-- defaults, overridden or extended by the state's own (sms.slice_aliases).
CREATE OR REPLACE FUNCTION sms.aliases_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN sms.default_aliases() || coalesce((SELECT jsonb_object_agg(a.alias, a.collection)
                                                FROM sms.slice_aliases a
                                               WHERE a.tenant_id = p_tenant_id AND a.fsa_id = p_fsa_id), '{}');
END;
$$;

-- ===== sql/084_part_covers.sql
-- sms.part_covers(part, collection, is_member, member): whether an entry is one of the members a
-- parsed slice part covers (before any `where`), its key folded and compared in byte order as
-- sms.parse_slice made the part. An expression that reads no table, so that it is inlined where
-- it is called: a scan of sms.entries that names it keeps the range conditions on lower(member)
-- that entries_folded_member serves, in the caller's own statement, which can order and cut that
-- scan (the key order of sms.first_entries stops after k).
CREATE OR REPLACE FUNCTION sms.part_covers(p_part jsonb, p_collection text, p_is_member boolean, p_member text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_collection = p_part ->> 'collection' AND p_is_member
       AND lower(p_member COLLATE "C") >= p_part ->> 'lo' AND lower(p_member COLLATE "C") < p_part ->> 'hi'
       AND lower(p_member COLLATE "C") LIKE p_part ->> 'pattern'
       AND (p_part ->> 'member' IS NULL OR p_member = p_part ->> 'member');
$$;

-- ===== sql/084_slice_entries.sql
-- sms.slice_entries(tenant, fsa, part): the member entries one parsed slice part covers (before
-- any `where`, sms.part_covers), read by a range scan of entries_folded_member within its
-- collection. Readers that order, cut or count what a part covers scan sms.entries with
-- sms.part_covers themselves, in one statement, rather than read this function's result.
CREATE OR REPLACE FUNCTION sms.slice_entries(p_tenant_id text, p_fsa_id text, p_part jsonb)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    SELECT e.member, e.value, e.version
      FROM sms.entries e
     WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id
       AND sms.part_covers(p_part, e.collection, e.is_member, e.member);
END;
$$;

-- ===== sql/085_slice_fingerprint.sql
-- sms.slice_fingerprint(tenant, fsa, parts): changes whenever anything a slice covers changes.
-- Per part: for a key family, its sms.member_counts row (count and latest change: one row,
-- however many members); for a whole collection, its count and the version of its marker row
-- (its latest change); else the count and the highest version of its candidate entries (an insert
-- raises the highest version, a delete lowers the count, an update raises the version). And the
-- version of the top-level value when it is not an object.
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

-- ===== sql/086_slice_coarse.sql
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

-- ===== sql/087_first_entries.sql
-- sms.first_entries(tenant, fsa, part, path, where, order, k): the first k entries of one parsed
-- slice part that hold `path` and pass `where`, by key (folded, as globs match, then exact) or most
-- recent change first (sms.recent_entries); all of them when k is NULL. By key, they are read in
-- the order of entries_folded_member and the scan stops after k: cost ∝ k (plus the entries
-- `where` skips), not ∝ the matches.
CREATE OR REPLACE FUNCTION sms.first_entries(p_tenant_id text, p_fsa_id text, p_part jsonb, p_path text[],
                                             p_where jsonpath, p_order text, p_k integer)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    IF p_order = 'key' THEN
        RETURN QUERY
        SELECT e.member, e.value, e.version
          FROM sms.entries e
         WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id
           AND sms.part_covers(p_part, e.collection, e.is_member, e.member)
           AND e.value #> p_path IS NOT NULL
           AND (p_where IS NULL OR jsonb_path_exists(e.value, p_where, '{}', true))
         ORDER BY lower(e.member), e.member
         LIMIT p_k;
    ELSIF p_order = 'recent' THEN
        RETURN QUERY SELECT r.member, r.value, r.version
                       FROM sms.recent_entries(p_tenant_id, p_fsa_id, p_part, p_path, p_where, p_k) r;
    END IF;
END;
$$;

-- ===== sql/088_read_slice.sql
-- sms.read_slice_parts(tenant, fsa, parts, k, order, where): the slice of a state (DESIGN §5)
-- for parsed parts (sms.parse_slice). Per part, the matching entries are ordered by key (folded,
-- then exact) or most recent change, cut to k (sms.first_entries), and merged into a sparse
-- sub-document of the state with the same nesting. `where` is a jsonpath filter on each entry's
-- value. Returns
--   {"slice": {...}, "total": n, "truncated": bool,
--    "parts": [{"spec", "collection", "path", "whole", "matched", "returned", "status_counts",
--               "members": [the returned members, in order]}]}
-- Cost: never ∝ the state's size. A whole collection or key family (`task:*`, `task:DESIGN_*`,
-- `resources`) read by key without `where` costs ∝ k: sms.member_counts has its counts. Other
-- parts are counted over the entries they cover. STABLE: one snapshot throughout.
CREATE OR REPLACE FUNCTION sms.read_slice_parts(p_tenant_id text, p_fsa_id text, p_parts jsonb,
                                                p_k integer, p_order text, p_where jsonpath)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_part    jsonb;
    v_path    text[];
    v_top     jsonb;
    v_slice   jsonb := '{}';
    v_total   bigint := 0;
    v_cut     boolean := false;
    v_info    jsonb := '[]';
    v_piece   record;
    v_matched bigint;
    v_counts  jsonb;
BEGIN
    IF p_k IS NOT NULL AND p_k < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'k must be at least 1';
    END IF;
    IF p_order NOT IN ('key', 'recent') THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = format('order must be key or recent, not %s', p_order);
    END IF;
    FOR v_part IN SELECT value FROM jsonb_array_elements(p_parts) LOOP
        v_path := ARRAY(SELECT jsonb_array_elements_text(v_part -> 'path'));
        SELECT value INTO v_top FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_part ->> 'collection' AND NOT is_member;

        IF (v_part ->> 'whole')::boolean AND jsonb_typeof(v_top) <> 'object' THEN
            -- a top-level value that is not an object: all or nothing
            SELECT count(*) AS matched, count(*) AS returned, NULL::jsonb AS status_counts,
                   '[]'::jsonb AS members, jsonb_build_object(v_part ->> 'collection', v_top) AS piece
              INTO v_piece
             WHERE v_top IS NOT NULL AND (p_where IS NULL OR jsonb_path_exists(v_top, p_where, '{}', true));
            IF v_piece.matched = 0 THEN
                v_piece.piece := NULL;
            END IF;
        ELSE
            -- how many match, in all and per status: one row of sms.member_counts for a whole
            -- collection or key family taken as it is, else counted over the candidates
            IF v_part ->> 'family' IS NOT NULL AND v_path = '{}' AND p_where IS NULL THEN
                SELECT c.members, c.statuses INTO v_matched, v_counts
                  FROM sms.member_counts c
                 WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
                   AND c.collection = v_part ->> 'collection' AND c.family = v_part ->> 'family';
                v_matched := coalesce(v_matched, 0);  -- no row: no such collection or family
                v_counts := nullif(v_counts, '{}');
            ELSE
                SELECT coalesce(sum(c.n), 0), jsonb_object_agg(c.status, c.n) FILTER (WHERE c.status IS NOT NULL)
                  INTO v_matched, v_counts
                  FROM (SELECT sms.entry_status(s.value) AS status, count(*) AS n
                          FROM sms.entries s
                         WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id
                           AND sms.part_covers(v_part, s.collection, s.is_member, s.member)
                           AND s.value #> v_path IS NOT NULL
                           AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
                         GROUP BY 1) c;
            END IF;
            SELECT v_matched AS matched, count(*) AS returned, v_counts AS status_counts,
                   coalesce(jsonb_agg(f.member ORDER BY CASE WHEN p_order = 'recent' THEN -f.version END,
                                                        lower(f.member COLLATE "C"), f.member COLLATE "C"),
                            '[]') AS members,
                   CASE WHEN count(*) > 0 THEN
                       jsonb_build_object(v_part ->> 'collection',
                                          jsonb_object_agg(f.member, sms.nest(v_path, f.value #> v_path)))
                   END AS piece
              INTO v_piece
              FROM sms.first_entries(p_tenant_id, p_fsa_id, v_part, v_path, p_where, p_order, p_k) f;
        END IF;

        v_total := v_total + v_piece.matched;
        v_cut := v_cut OR v_piece.returned < v_piece.matched;
        IF v_piece.piece IS NOT NULL THEN
            v_slice := sms.deep_union(v_slice, v_piece.piece);
        END IF;
        v_info := v_info || jsonb_build_object('spec', v_part ->> 'spec', 'collection', v_part ->> 'collection',
                                               'matched', v_piece.matched, 'returned', v_piece.returned,
                                               'status_counts', v_piece.status_counts, 'members', v_piece.members,
                                               'path', v_part -> 'path', 'whole', v_part -> 'whole');
    END LOOP;
    RETURN jsonb_build_object('slice', v_slice, 'total', v_total, 'truncated', v_cut, 'parts', v_info);
END;
$$;

-- ===== sql/090_store_slice_summary.sql
-- sms.store_slice_summary(...): caches a slice read by sms.read_slice with its summary body. A
-- row computed at an older version never replaces a newer one; beyond 200 rows per state the
-- least recently used are evicted. A read from before the state was purged is not kept (the
-- state's version is below it now; sms.state_fence keeps a purge from passing a store under way).
CREATE OR REPLACE FUNCTION sms.store_slice_summary(p_tenant_id text, p_fsa_id text, p_read jsonb, p_summary text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();  -- a value: Citus refuses now() in an upsert's SET
BEGIN
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    IF (p_read ->> 'version')::bigint > sms.current_version(p_tenant_id, p_fsa_id) THEN
        RETURN;
    END IF;
    INSERT INTO sms.summary_cache AS c (tenant_id, fsa_id, cache_key, request, version, fingerprint, coarse,
                                        result, summary, slice_bytes, summary_chars)
    VALUES (p_tenant_id, p_fsa_id, p_read ->> 'cache_key', p_read -> 'request', (p_read ->> 'version')::bigint,
            p_read ->> 'fingerprint', p_read ->> 'coarse',
            jsonb_build_object('slice', p_read -> 'slice', 'total', p_read -> 'total',
                               'truncated', p_read -> 'truncated', 'parts', p_read -> 'parts'),
            p_summary, octet_length((p_read -> 'slice')::text), length(p_summary))
    ON CONFLICT (tenant_id, fsa_id, cache_key) DO UPDATE
       SET version = EXCLUDED.version, fingerprint = EXCLUDED.fingerprint, coarse = EXCLUDED.coarse,
           result = EXCLUDED.result,
           summary = EXCLUDED.summary, slice_bytes = EXCLUDED.slice_bytes,
           summary_chars = EXCLUDED.summary_chars, created_at = v_now, last_used_at = v_now
     WHERE c.version <= EXCLUDED.version;

    DELETE FROM sms.summary_cache
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
       AND cache_key IN (SELECT cache_key FROM sms.summary_cache
                          WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
                          ORDER BY last_used_at DESC OFFSET 200);
END;
$$;

-- ===== sql/095_set_alias.sql
-- sms.set_alias(tenant, fsa, alias, collection): from now on `alias:pattern` in the state's slice
-- specs reads `collection`; a NULL collection removes the state's own alias (a default one
-- applies again). Returns the state's aliases (sms.aliases_of). An alias is a letter, then up to
-- 62 letters, digits, "_" or "-" (matched case-insensitively); a collection 1 to 512 characters
-- without control characters; a state has at most 100 aliases of its own. Raises SM009 (invalid
-- slice) otherwise, SM007 for bad ids. Takes the state's fence (sms.state_fence), so that a purge
-- under way is never passed.
CREATE OR REPLACE FUNCTION sms.set_alias(p_tenant_id text, p_fsa_id text, p_alias text, p_collection text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_alias text := lower(p_alias COLLATE "C");
    v_now   timestamptz := now();  -- a value: Citus refuses now() in an upsert's SET
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    IF v_alias IS NULL OR v_alias !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009',
            MESSAGE = format('alias "%s" must be a letter, then up to 62 letters, digits, _ or -', left(p_alias, 80));
    END IF;
    IF p_collection = '' OR length(p_collection) > 512 OR p_collection ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009',
            MESSAGE = 'an alias names a collection of 1 to 512 characters without control characters';
    END IF;
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    -- one alias writer per state at a time, so that the limit below holds
    PERFORM pg_advisory_xact_lock(hashtextextended('sms.slice_aliases/' || p_tenant_id || '/' || p_fsa_id, 0));
    IF p_collection IS NULL THEN
        DELETE FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND alias = v_alias;
    ELSE
        INSERT INTO sms.slice_aliases AS a (tenant_id, fsa_id, alias, collection)
        VALUES (p_tenant_id, p_fsa_id, v_alias, p_collection)
        ON CONFLICT (tenant_id, fsa_id, alias) DO UPDATE SET collection = EXCLUDED.collection, created_at = v_now;
        IF (SELECT count(*) FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id) > 100 THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a state has at most 100 aliases of its own';
        END IF;
    END IF;
    RETURN sms.aliases_of(p_tenant_id, p_fsa_id);
END;
$$;

-- ===== sql/097_policies_of.sql
-- sms.policies_of(tenant, fsa): {"rules": [the state's own rules], "defaults": [the tenant's]},
-- each in the order they were set. With fsa NULL, "rules" are the tenant's defaults alone.
CREATE OR REPLACE FUNCTION sms.policies_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN jsonb_build_object(
        'rules', coalesce((SELECT jsonb_agg(rule ORDER BY rule_no) FROM sms.policies
                            WHERE tenant_id = p_tenant_id AND fsa_id = coalesce(p_fsa_id, '')), '[]'),
        'defaults', coalesce((SELECT jsonb_agg(rule ORDER BY rule_no) FROM sms.policies
                               WHERE tenant_id = p_tenant_id AND fsa_id = '' AND p_fsa_id IS NOT NULL), '[]'));
END;
$$;

-- ===== sql/100_entry_at.sql
-- sms.entry_at(tenant, fsa, collection, is_member, member, version): one entry's value at a
-- version (NULL: absent): its latest change up to that version, or else its value in the latest
-- snapshot up to it. Index probes only.
CREATE OR REPLACE FUNCTION sms.entry_at(p_tenant_id text, p_fsa_id text, p_collection text, p_is_member boolean,
                                        p_member text, p_version bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_value jsonb;
BEGIN
    SELECT CASE WHEN h.found THEN h.value ELSE s.value END
      INTO v_value
      FROM (SELECT true AS found, value FROM sms.entry_history
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
               AND is_member = p_is_member AND member = p_member AND version <= p_version
             ORDER BY version DESC LIMIT 1) h
      FULL JOIN (SELECT e.value FROM sms.snapshot_entries e
                  WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.collection = p_collection
                    AND e.is_member = p_is_member AND e.member = p_member
                    AND e.version = (SELECT max(version) FROM sms.snapshots
                                      WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version <= p_version)) s
        ON true;
    RETURN v_value;
END;
$$;

-- ===== sql/101_entries_at.sql
-- sms.entries_at(tenant, fsa, version): the state's entries as they were at a version: the latest
-- snapshot up to it, overlaid with the entry changes after that snapshot. Cost ∝ the state's size
-- plus at most sms.snapshot_every() versions of changes, however far back the version is.
CREATE OR REPLACE FUNCTION sms.entries_at(p_tenant_id text, p_fsa_id text, p_version bigint)
RETURNS TABLE (collection text, is_member boolean, member text, value jsonb)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN QUERY
    WITH snap AS (
        SELECT coalesce(max(version), 0) AS version FROM sms.snapshots
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version <= p_version
    ), recent AS (
        SELECT DISTINCT ON (h.collection, h.is_member, h.member) h.collection, h.is_member, h.member, h.value
          FROM sms.entry_history h, snap
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.version > snap.version AND h.version <= p_version
         ORDER BY h.collection, h.is_member, h.member, h.version DESC
    )
    SELECT r.collection, r.is_member, r.member, r.value FROM recent r WHERE r.value IS NOT NULL
    UNION ALL
    SELECT e.collection, e.is_member, e.member, e.value
      FROM sms.snapshot_entries e, snap
     WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id AND e.version = snap.version
       AND NOT EXISTS (SELECT FROM recent r
                        WHERE r.collection = e.collection AND r.is_member = e.is_member AND r.member = e.member);
END;
$$;

-- ===== sql/110_add_comment.sql
-- sms.add_comment(tenant, fsa, task_id, author, body, is_blocker, lineage_id): appends a comment
-- to an existing task (tasks.<task_id>); SM010 (not found) and nothing stored when there is no
-- such task. Bodies are markdown, 1 to 65536 characters. Returns the stored comment, whose id is
-- the state's next (sms.states.comments, counted on the state's row: a comment waits for a delta
-- being applied to the state to commit). Takes the state's fence (sms.state_fence), so that a
-- purge under way is never passed.
CREATE OR REPLACE FUNCTION sms.add_comment(p_tenant_id text, p_fsa_id text, p_task_id text, p_author text,
                                           p_body text, p_is_blocker boolean DEFAULT false,
                                           p_lineage_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_comment_id bigint;
    v_comment    sms.task_comments;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('task_id', coalesce(p_task_id, '')), sms.check_id('author', coalesce(p_author, '')),
            sms.check_id('lineage_id', p_lineage_id);
    IF p_body IS NULL OR length(p_body) NOT BETWEEN 1 AND 65536 THEN
        PERFORM sms.raise_invalid('body', 'a comment body is 1 to 65536 characters of markdown');
    END IF;
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    IF NOT EXISTS (SELECT FROM sms.entries WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
                                             AND collection = 'tasks' AND is_member AND member = p_task_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('task %s does not exist in %s/%s', p_task_id, p_tenant_id, p_fsa_id),
            DETAIL = jsonb_build_object('path', sms.format_path(ARRAY['tasks', p_task_id]))::text;
    END IF;
    UPDATE sms.states SET comments = comments + 1
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
    RETURNING comments INTO v_comment_id;
    INSERT INTO sms.task_comments (tenant_id, fsa_id, task_id, comment_id, author, body, is_blocker, lineage_id)
    VALUES (p_tenant_id, p_fsa_id, p_task_id, v_comment_id, p_author, p_body, coalesce(p_is_blocker, false),
            p_lineage_id)
    RETURNING * INTO v_comment;
    RETURN to_jsonb(v_comment);
END;
$$;

-- ===== sql/111_caller_tenants.sql
-- sms.caller_tenants(): whose keys the caller may manage. NULL (every tenant's) for the owner of
-- the schema's tables and superusers — SQL users and the `sms keys` command; for any other role
-- (the service) the tenants its transaction acts for (sms.act_for), or none.
CREATE OR REPLACE FUNCTION sms.caller_tenants() RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE WHEN pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = 'sms.api_keys'::regclass),
                                 'USAGE')
                THEN NULL ELSE coalesce(sms.request_tenants(), '{}') END;
END;
$$;

-- ===== sql/113_authenticate.sql
-- sms.authenticate(secret_hash): the API key with this SHA-256 (as sms.list_keys shows keys, with
-- its revocation and expiry for the caller to judge), or NULL when there is none.
CREATE OR REPLACE FUNCTION sms.authenticate(p_secret_hash bytea) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_key jsonb;
BEGIN
    SELECT to_jsonb(k) - 'secret_hash' || jsonb_build_object('expired', k.expires_at <= now())
      INTO v_key
      FROM sms.api_keys k WHERE k.secret_hash = p_secret_hash;
    RETURN v_key;
END;
$$;
REVOKE ALL ON FUNCTION sms.authenticate(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.authenticate(bytea) TO sms_api;

-- ===== sql/114_list_keys.sql
-- sms.list_keys(): the API keys the caller may manage (sms.caller_tenants: every key for SQL
-- users, for the service those whose tenants its admin key names), oldest first, without hashes.
CREATE OR REPLACE FUNCTION sms.list_keys() RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_keys jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(to_jsonb(k) - 'secret_hash' ORDER BY k.created_at, k.key_id), '[]')
      INTO v_keys
      FROM sms.api_keys k, LATERAL (SELECT sms.caller_tenants() AS allowed) c
     WHERE c.allowed IS NULL OR k.tenants <@ c.allowed;
    RETURN v_keys;
END;
$$;
REVOKE ALL ON FUNCTION sms.list_keys() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.list_keys() TO sms_api;

-- ===== sql/116_keys_exist.sql
-- sms.keys_exist(): whether any API key was ever made (revoked ones count). Until one is, the
-- service runs in protected mode (loopback clients only); from then on every request needs a key.
CREATE OR REPLACE FUNCTION sms.keys_exist() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT FROM sms.api_keys);
END;
$$;
REVOKE ALL ON FUNCTION sms.keys_exist() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.keys_exist() TO sms_api;

-- ===== sql/122_path_history.sql
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
