-- ===== sql/061_entry_status.sql
-- sms.entry_status(value): the status of a task-like entry (its "status", when that is a string),
-- or NULL. What slices count by status (sms.member_counts, sms.read_slice_parts).
CREATE OR REPLACE FUNCTION sms.entry_status(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(p_value -> 'status') = 'string' THEN p_value ->> 'status' END;
$$;

-- ===== sql/062_key_family.sql
-- sms.key_family(member): the family of a member key: its folded form (lower case, as slices match
-- keys) up to and including its first character that is not a letter or digit, or NULL when it
-- has none (DESIGN_001 -> design_, latency_ms_p50 -> latency_, SKU-7 -> sku-). A family is exactly
-- the set of members that the glob `family*` matches, so sms.member_counts can count it for such a
-- glob (`task:DESIGN_*`) without reading its members.
CREATE OR REPLACE FUNCTION sms.key_family(p_member text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substring(lower(p_member COLLATE "C") FROM '^[a-z0-9]*[^a-z0-9]');
$$;

-- ===== sql/063_tally.sql
-- sms.tally(counts, status, by): counts by status ({"OPEN": 3, …}) with one status's count moved
-- by `by`; a count that reaches 0 is dropped, and a NULL status changes nothing.
CREATE OR REPLACE FUNCTION sms.tally(p_counts jsonb, p_status text, p_by bigint) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_status IS NULL THEN p_counts
                WHEN coalesce((p_counts ->> p_status)::bigint, 0) + p_by = 0 THEN p_counts - p_status
                ELSE jsonb_set(p_counts, ARRAY[p_status], to_jsonb(coalesce((p_counts ->> p_status)::bigint, 0) + p_by))
           END;
$$;

-- ===== sql/064_member_counts.sql
-- sms.member_counts: how many members a collection has, in all (family '') and per key family
-- (sms.key_family), with their counts by status (sms.entry_status) and the version of the latest
-- change to any of them. The merge keeps it (sms.put_entry, sms.count_members), so that a slice of
-- a whole collection or of a family (`task:*`, `task:DESIGN_*`) has its total, its status counts
-- and its cache fingerprint at the cost of one row, however many members it matches.
CREATE TABLE sms.member_counts (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    collection text COLLATE "C" NOT NULL,
    family     text COLLATE "C" NOT NULL,  -- '' = every member of the collection
    members    bigint           NOT NULL,
    statuses   jsonb            NOT NULL,  -- members per status: {"OPEN": 12, "DONE": 3}
    version    bigint           NOT NULL,  -- the latest state version that changed one of the members
                                           -- (family '': that changed the counts; the collection's
                                           -- marker row in sms.entries has its latest change)
    PRIMARY KEY (tenant_id, fsa_id, collection, family)
);

-- ===== sql/065_count_members.sql
-- sms.count_members(tenant, fsa, collection, version): counts one collection's members afresh into
-- sms.member_counts, as of `version`: after a whole top-level key was set or removed (sms.write_op)
-- and when a migration fills the table. Cost ∝ the collection's members.
CREATE OR REPLACE FUNCTION sms.count_members(p_tenant_id text, p_fsa_id text, p_collection text, p_version bigint)
RETURNS void
LANGUAGE sql AS $$
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
$$;

-- ===== every collection counted as it is now; writers wait until this revision commits, so that
-- none changes a member between the count and the new sms.put_entry
LOCK TABLE sms.entries IN SHARE MODE;
SELECT sms.count_members(tenant_id, fsa_id, collection, version)
  FROM sms.entries
 WHERE NOT is_member AND member = '' AND value = '{}';

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
    v_was text := sms.entry_status(p_old);
    v_is  text := sms.entry_status(p_new);
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
        -- (the marker row above already has the collection's latest change)
        INSERT INTO sms.member_counts AS c (tenant_id, fsa_id, collection, family, members, statuses, version)
        SELECT p_tenant_id, p_fsa_id, p_collection, f.family, entry_delta,
               sms.tally(sms.tally('{}', v_was, -1), v_is, 1), p_version
          FROM (VALUES (CASE WHEN entry_delta <> 0 OR v_was IS DISTINCT FROM v_is THEN '' END),
                       (sms.key_family(p_member))) f(family)
         WHERE f.family IS NOT NULL
        ON CONFLICT (tenant_id, fsa_id, collection, family) DO UPDATE
           SET members = c.members + EXCLUDED.members,
               statuses = sms.tally(sms.tally(c.statuses, v_was, -1), v_is, 1),
               version = EXCLUDED.version;
    END IF;
    IF p_new IS DISTINCT FROM p_old THEN
        INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_version, p_new)
        ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = EXCLUDED.value;
    END IF;
END;
$$;

-- ===== sql/060_write_op.sql
-- sms.write_op(tenant, fsa, version, op): applies one normalised op to sms.entries, touching only
-- the entries on its path (cost ∝ the entry, never the state), and records what changed in
-- sms.entry_history. Returns how the state's entry count and content bytes changed. The caller (sms.apply_delta) holds the state's lock.
CREATE OR REPLACE FUNCTION sms.write_op(p_tenant_id text, p_fsa_id text, p_version bigint, p_op jsonb,
                                        OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[] := ARRAY(SELECT jsonb_array_elements_text(p_op -> 'path'));
    v_op   text   := p_op ->> 'op';
    v_arg  jsonb  := p_op -> 'value';
    v_at   text   := sms.format_path(v_keys);
    v_top  jsonb;   -- the top-level row: NULL if absent, the marker '{}' if an object
    v_key  text;
    v_old  jsonb;
    v_new  jsonb;
BEGIN
    entry_delta := 0;
    byte_delta := 0;
    SELECT value INTO v_top FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1] AND NOT is_member;

    IF cardinality(v_keys) = 1 AND v_op IN ('set', 'unset') THEN
        -- replace or remove a whole top-level key
        WITH gone AS (
            DELETE FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
            RETURNING is_member, member, octet_length(value::text) AS size),
        logged AS (
            INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
            SELECT p_tenant_id, p_fsa_id, v_keys[1], is_member, member, p_version, NULL FROM gone
            ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = NULL)
        SELECT -count(*), -coalesce(sum(size), 0) INTO entry_delta, byte_delta FROM gone;
        IF v_op = 'set' THEN
            WITH added AS (
                INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
                SELECT p_tenant_id, p_fsa_id, v_keys[1], false, '',
                       CASE WHEN jsonb_typeof(v_arg) = 'object' THEN '{}' ELSE v_arg END, p_version
                UNION ALL
                SELECT p_tenant_id, p_fsa_id, v_keys[1], true, key, value, p_version
                  FROM jsonb_each(CASE WHEN jsonb_typeof(v_arg) = 'object' THEN v_arg ELSE '{}' END)
                RETURNING is_member, member, value, octet_length(value::text) AS size),
            logged AS (
                INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
                SELECT p_tenant_id, p_fsa_id, v_keys[1], is_member, member, p_version, value FROM added
                ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version)
                DO UPDATE SET value = EXCLUDED.value)
            SELECT entry_delta + count(*), byte_delta + sum(size) INTO entry_delta, byte_delta FROM added;
        END IF;
        IF jsonb_typeof(v_top) = 'object' OR (v_op = 'set' AND jsonb_typeof(v_arg) = 'object') THEN
            -- a collection was replaced or removed: count its members afresh
            PERFORM sms.count_members(p_tenant_id, p_fsa_id, v_keys[1], p_version);
        END IF;
        RETURN;
    END IF;

    IF cardinality(v_keys) = 1 AND v_op <> 'merge' THEN
        -- an operator on a top-level value; on an object marker apply_op raises the type mismatch
        v_new := sms.apply_op(v_top, '{}', v_op, v_arg, v_at);
        SELECT d.entry_delta, d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', v_top, v_new, p_version) d;
        RETURN;
    END IF;

    IF cardinality(v_keys) = 1 AND jsonb_typeof(v_top) <> 'object' THEN
        -- $merge replaces a value that is not an object (RFC 7396)
        SELECT d.entry_delta, d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', v_top, NULL, p_version) d;
        v_top := NULL;
    END IF;
    IF v_top IS NOT NULL AND jsonb_typeof(v_top) <> 'object' THEN
        -- writing through a scalar or array: apply_op raises (or ignores $unset/$remove)
        PERFORM sms.apply_op(v_top, v_keys[2:], v_op, v_arg, v_at);
        RETURN;
    END IF;
    IF v_top IS NULL AND v_op IN ('unset', 'remove') THEN
        RETURN;
    END IF;
    IF v_top IS NULL THEN
        SELECT write_op.entry_delta + d.entry_delta, write_op.byte_delta + d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', NULL, '{}', p_version) d;
    END IF;

    -- $merge on a whole collection touches one member per key of the patch; any other op one member
    FOR v_key, v_arg IN
        SELECT key, value FROM jsonb_each(v_arg) WHERE cardinality(v_keys) = 1
        UNION ALL
        SELECT v_keys[2], v_arg WHERE cardinality(v_keys) > 1
    LOOP
        SELECT value INTO v_old FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
           AND is_member AND member = v_key;
        v_new := CASE WHEN cardinality(v_keys) = 1
                      THEN nullif(sms.merge_patch(v_old, v_arg), 'null')
                      ELSE sms.apply_op(v_old, v_keys[3:], v_op, v_arg, v_at) END;
        SELECT write_op.entry_delta + d.entry_delta, write_op.byte_delta + d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], true, v_key, v_old, v_new, p_version) d;
    END LOOP;
END;
$$;

-- ===== sql/081_entries_folded_member.sql
DROP INDEX sms.entries_folded_member;
-- Index for slices: member keys folded to lower case (globs match case-insensitively), then as
-- they are, in byte order (entries.member is COLLATE "C"): a glob's literal prefix is a range scan
-- within one collection, and that scan already yields the slices' key order, so reading the first
-- k stops after k. It holds no column that a merge changes (value, version), so entry updates
-- stay HOT (heap-only) and write no index entries.
CREATE INDEX entries_folded_member ON sms.entries (tenant_id, fsa_id, collection, lower(member), member)
 WHERE is_member;

-- ===== sql/082_parse_slice.sql
-- sms.parse_slice(spec): a slice spec (DESIGN §5) into a list of parts, one per comma-separated
-- spec:
--   {"spec": text, "collection": c, "path": [keys after the member],
--    "member": exact member key | null, "whole": true when the spec names a top-level key alone,
--    "pattern": LIKE pattern on lower(member), "lo"/"hi": the key range of its literal prefix,
--    "family": the sms.member_counts family whose members are exactly those the pattern matches
--              ('' = the whole collection), or null}
-- Forms: `alias:glob` (task -> tasks, metric -> metrics, agent -> agents_online,
-- resource -> resources, any other name is the collection itself), `collection.member[.path]`
-- where the member may be a glob (`resources.*`, `tasks.*.status`), and `key` alone.
-- The pattern of `alias:pattern` is a glob (`*`, `?`), matched case-insensitively even without
-- wildcards; a dotted path names its member exactly. Raises SM009 (invalid slice) with the reason.
CREATE OR REPLACE FUNCTION sms.parse_slice(p_spec text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_part       text;
    v_name       text;
    v_glob       text;
    v_keys       text[];
    v_collection text;
    v_out        jsonb := '[]';
    v_prefix     text;
    v_pattern    text;
    v_alias      boolean;
BEGIN
    IF p_spec IS NULL OR btrim(p_spec) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'the slice spec is empty';
    END IF;
    FOR v_part IN SELECT btrim(p) FROM regexp_split_to_table(p_spec, ',') p LOOP
        IF v_part = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009',
                MESSAGE = format('slice spec "%s" has an empty part between commas', p_spec);
        END IF;
        v_alias := v_part ~ '^[^.:\\]+:';
        IF v_alias THEN
            v_name := split_part(v_part, ':', 1);
            v_glob := substr(v_part, length(v_name) + 2);
            v_collection := CASE lower(v_name) WHEN 'task' THEN 'tasks' WHEN 'metric' THEN 'metrics'
                                WHEN 'agent' THEN 'agents_online' WHEN 'resource' THEN 'resources'
                                ELSE v_name END;
            IF v_glob = '' THEN
                RAISE EXCEPTION USING ERRCODE = 'SM009',
                    MESSAGE = format('slice spec "%s" needs a key pattern after the colon (e.g. %s:*)', v_part, v_name);
            END IF;
            v_keys := ARRAY[v_collection, v_glob];
        ELSE
            BEGIN
                v_keys := sms.parse_path(v_part);
            EXCEPTION WHEN SQLSTATE 'SM001' OR SQLSTATE 'SM006' THEN
                RAISE EXCEPTION USING ERRCODE = 'SM009',
                    MESSAGE = format('slice spec "%s" is neither alias:pattern nor a dotted path', v_part);
            END;
            IF v_keys[1] ~ '[*?]' OR EXISTS (SELECT FROM unnest(v_keys[3:]) k WHERE k ~ '[*?]') THEN
                RAISE EXCEPTION USING ERRCODE = 'SM009',
                    MESSAGE = format('slice spec "%s": only the member (second) key may hold * or ?', v_part);
            END IF;
        END IF;

        IF cardinality(v_keys) = 1 THEN
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', true,
                'path', '[]'::jsonb, 'member', NULL, 'pattern', '%', 'lo', '', 'hi', chr(1114111), 'family', '');
        ELSIF v_alias OR v_keys[2] ~ '[*?]' THEN
            v_glob := lower(v_keys[2] COLLATE "C");  -- folded as lower(member) is
            v_prefix := substring(v_glob FROM '^[^*?]*');
            v_pattern := replace(replace(regexp_replace(v_glob, '([\\%_])', '\\\1', 'g'), '*', '%'), '?', '_');
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', false,
                'path', to_jsonb(v_keys[3:]), 'member', NULL, 'pattern', v_pattern,
                'lo', v_prefix, 'hi', sms.next_prefix(v_prefix),
                'family', CASE WHEN v_glob = '*' THEN ''
                               WHEN v_glob = v_prefix || '*' AND sms.key_family(v_prefix) = v_prefix THEN v_prefix
                          END);
        ELSE
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', false,
                'path', to_jsonb(v_keys[3:]), 'member', v_keys[2],
                'pattern', regexp_replace(lower(v_keys[2] COLLATE "C"), '([\\%_])', '\\\1', 'g'),
                'lo', lower(v_keys[2] COLLATE "C"), 'hi', sms.next_prefix(lower(v_keys[2] COLLATE "C")),
                'family', NULL);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_out) > 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a slice may combine at most 20 specs';
    END IF;
    RETURN v_out;
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
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT md5(string_agg(concat_ws(':',
                   CASE WHEN p.part ->> 'family' IS NOT NULL THEN
                       (SELECT concat_ws(':', c.members, CASE WHEN c.family = '' THEN t.version ELSE c.version END)
                          FROM sms.member_counts c
                         WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
                           AND c.collection = p.part ->> 'collection' AND c.family = p.part ->> 'family')
                   ELSE
                       (SELECT concat_ws(':', count(*), max(s.version))
                          FROM sms.slice_entries(p_tenant_id, p_fsa_id, p.part) s)
                   END,
                   CASE WHEN jsonb_typeof(t.value) <> 'object' THEN t.version END),
               ',' ORDER BY p.i))
      FROM jsonb_array_elements(p_parts) WITH ORDINALITY p(part, i)
      LEFT JOIN sms.entries t
        ON t.tenant_id = p_tenant_id AND t.fsa_id = p_fsa_id
       AND t.collection = p.part ->> 'collection' AND NOT t.is_member;
$$;

-- ===== sql/087_first_entries.sql
-- sms.first_entries(tenant, fsa, part, path, where, order, k): the first k entries of one parsed
-- slice part that hold `path` and pass `where`, by key (folded, as globs match, then exact) or most
-- recent change first; all of them when k is NULL. By key, they are read in the order of
-- entries_folded_member and the scan stops after k: cost ∝ k (plus the entries `where` skips), not
-- ∝ the matches; by recent change, every candidate is read to find the k newest.
CREATE OR REPLACE FUNCTION sms.first_entries(p_tenant_id text, p_fsa_id text, p_part jsonb, p_path text[],
                                             p_where jsonpath, p_order text, p_k integer)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    (SELECT s.member, s.value, s.version
       FROM sms.slice_entries(p_tenant_id, p_fsa_id, p_part) s
      WHERE p_order = 'key' AND s.value #> p_path IS NOT NULL
        AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
      ORDER BY lower(s.member COLLATE "C"), s.member COLLATE "C"
      LIMIT p_k)
    UNION ALL
    (SELECT s.member, s.value, s.version
       FROM sms.slice_entries(p_tenant_id, p_fsa_id, p_part) s
      WHERE p_order = 'recent' AND s.value #> p_path IS NOT NULL
        AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
      ORDER BY s.version DESC, lower(s.member COLLATE "C"), s.member COLLATE "C"
      LIMIT p_k);
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
                          FROM sms.slice_entries(p_tenant_id, p_fsa_id, v_part) s
                         WHERE s.value #> v_path IS NOT NULL
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

-- ===== cached slices were fingerprinted the old way: read them afresh
TRUNCATE sms.summary_cache;
