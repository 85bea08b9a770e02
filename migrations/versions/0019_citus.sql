-- Frozen copy of what revision 0019 installs (the sql/ files as they were), run as one script.

-- ===== sql/004_act_for.sql
-- sms.act_for(tenants): makes the current transaction act for these tenants (sms.request_tenants)
-- and returns true. The service's statements start from it — `SELECT … FROM sms.act_for($n)`, or
-- a LATERAL subquery that waits for it — so the setting is in place, for that statement's
-- transaction only, before anything reads a table; the tenants come from the request's API key,
-- never from the ids the statement names. NULL acts for no tenant.
-- A SET LOCAL rather than set_config(): the same on one server, and on Citus the command that
-- citus.propagate_set_commands = 'local' carries to the workers the transaction reaches, where
-- row-level security reads it too (docs/scale-out.md).
CREATE OR REPLACE FUNCTION sms.act_for(p_tenants text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    EXECUTE format('SET LOCAL sms.tenants = %L', coalesce(p_tenants::text, ''));
    RETURN true;
END;
$$;

-- ===== sql/057_take_snapshot.sql
-- sms.take_snapshot(tenant, fsa, version): saves the state's current entries as the snapshot at
-- `version` (the caller holds the state's lock, so the entries are exactly that version's).
CREATE OR REPLACE FUNCTION sms.take_snapshot(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_entry record;
BEGIN
    INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_version)
    ON CONFLICT DO NOTHING;
    -- row by row, not INSERT ... SELECT: Citus runs a write delegated to the tenant's node only when
    -- each of its statements names the tenant, which a copy between two tables does not
    FOR v_entry IN SELECT e.collection, e.is_member, e.member, e.value
                     FROM sms.entries e WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id LOOP
        INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
        VALUES (p_tenant_id, p_fsa_id, p_version, v_entry.collection, v_entry.is_member, v_entry.member, v_entry.value)
        ON CONFLICT DO NOTHING;
    END LOOP;
END;
$$;

-- ===== sql/065_count_members.sql
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

-- ===== sql/089_read_slice_counted.sql
-- sms.read_slice_counted(...): sms.read_slice on the primary: a read answered from the cache also
-- counts its hit and remembers the collections' versions it was found valid at — without ever
-- waiting: a row another reader is bumping just then is skipped. One function, so that the
-- statement that calls it reads no table itself: a sharded database (Citus) runs a statement on a
-- tenant's node whole, and a function read there cannot read the tables in turn.
CREATE OR REPLACE FUNCTION sms.read_slice_counted(p_tenant_id text, p_fsa_id text, p_spec text,
                                                  p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                                  p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_read jsonb := sms.read_slice(p_tenant_id, p_fsa_id, p_spec, p_k, p_order, p_where, p_options);
BEGIN
    IF (v_read ->> 'cached')::boolean THEN
        UPDATE sms.summary_cache c SET hits = c.hits + 1, last_used_at = now(), coarse = v_read ->> 'coarse'
         WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
           AND c.ctid = (SELECT s.ctid FROM sms.summary_cache s
                          WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id AND s.cache_key = v_read ->> 'cache_key'
                            FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN v_read;
END;
$$;

-- ===== sql/102_read_deltas.sql
-- sms.read_deltas(tenant, fsa, since, limit): a page of the state's log after version `since`,
-- oldest first, as the service answers it: {"tenant_id", "fsa_id", "since", "version" (the
-- state's), "deltas": [...], "more"}. A `since` that a compaction dropped is a problem
-- (sms.check_since), not a page that silently skips deltas. Built as text rather than with
-- json_build_object, whose output pads every colon with spaces. One function, so that the
-- statement that calls it reads no table itself (sql/089_read_slice_counted.sql says why).
CREATE OR REPLACE FUNCTION sms.read_deltas(p_tenant_id text, p_fsa_id text, p_since bigint, p_limit integer)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_deltas json;
    v_more   boolean;
BEGIN
    PERFORM sms.check_since(p_tenant_id, p_fsa_id, p_since);
    SELECT to_json(array_agg(p ORDER BY p.version)) INTO v_deltas
      FROM (SELECT d.version, d.delta_id, d.actor, d.lineage_id, d.trace_id, d.parent_id, d.meta, d.ops, d.paths,
                   d.created_at
              FROM sms.deltas d
             WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
             ORDER BY d.version
             LIMIT p_limit) p;
    v_more := EXISTS (SELECT FROM sms.deltas d
                       WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
                       ORDER BY d.version OFFSET p_limit LIMIT 1);
    RETURN '{"tenant_id":' || to_json(p_tenant_id) || ',"fsa_id":' || to_json(p_fsa_id) || ',"since":' || p_since
           || ',"version":' || sms.current_version(p_tenant_id, p_fsa_id)
           || ',"deltas":' || coalesce(v_deltas::text, '[]') || ',"more":' || v_more::text || '}';
END;
$$;

-- ===== sql/105_path_changes.sql
-- sms.path_changes(tenant, fsa, path, limit): who changed a path, when, from what to what, newest
-- first: the history of the entry holding the path (an index scan of sms.entry_history), kept
-- where the value at the path differs from the one before, joined to the log for actor and
-- lineage. A path naming a whole collection lists its members' changes.
CREATE OR REPLACE FUNCTION sms.path_changes(p_tenant_id text, p_fsa_id text, p_path text, p_limit integer DEFAULT 100)
RETURNS TABLE (version bigint, path text, old_value jsonb, new_value jsonb, existed boolean, exists_now boolean,
               actor text, lineage_id text, trace_id text, created_at timestamptz)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_keys   text[] := sms.parse_path(p_path);
    v_whole  boolean := cardinality(v_keys) = 1;
    v_low    text := CASE WHEN v_whole THEN '' ELSE v_keys[2] END;
    v_high   text := CASE WHEN v_whole THEN repeat(chr(1114111), 8) ELSE v_keys[2] END;
    v_marked bigint[];  -- a whole collection: the versions its marker row changed at ...
    v_then   jsonb[];   -- ... and the collection as it was at each
BEGIN
    IF v_whole THEN
        -- first, apart: a statement that reads a table calls no function that reads one (a sharded
        -- database runs it on the tenant's node whole)
        SELECT array_agg(h.version) INTO v_marked
          FROM sms.entry_history h
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = v_keys[1]
           AND NOT h.is_member AND h.member = '' AND jsonb_typeof(h.value) = 'object';
        SELECT array_agg(sms.value_at(p_tenant_id, p_fsa_id, v_keys, v) ORDER BY n) INTO v_then
          FROM unnest(v_marked) WITH ORDINALITY m(v, n);
    END IF;
    RETURN QUERY
    WITH changes AS (
        -- the top-level row (the value itself, or the marker of an object) ...
        SELECT h.version, h.is_member, h.member,
               CASE WHEN NOT v_whole THEN h.value #> v_keys[2:]
                    WHEN jsonb_typeof(h.value) = 'object'   -- the marker: the collection as it was then
                    THEN v_then[array_position(v_marked, h.version)]
                    ELSE h.value END AS value
          FROM sms.entry_history h
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = v_keys[1]
           AND NOT h.is_member AND h.member = ''
        UNION ALL
        -- ... and the member on the path (every member for a whole collection): key ranges, so
        -- that both cases are index range scans
        SELECT h.version, h.is_member, h.member, CASE WHEN v_whole THEN h.value ELSE h.value #> v_keys[3:] END
          FROM sms.entry_history h
         WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id AND h.collection = v_keys[1]
           AND h.is_member AND h.member >= v_low AND h.member <= v_high
    ), steps AS (
        SELECT c.version, c.is_member, c.member, c.value AS new_value, lag(c.value) OVER w AS old_value
          FROM changes c
        WINDOW w AS (PARTITION BY c.is_member, c.member ORDER BY c.version)
    )
    SELECT s.version,
           CASE WHEN v_whole AND s.is_member THEN sms.format_path(ARRAY[v_keys[1], s.member]) ELSE p_path END,
           s.old_value, s.new_value, s.old_value IS NOT NULL, s.new_value IS NOT NULL,
           d.actor, d.lineage_id, d.trace_id, d.created_at
      FROM steps s
      JOIN sms.deltas d ON d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version = s.version
     WHERE s.new_value IS DISTINCT FROM s.old_value
       -- a collection's own marker row says only "this is an object"
       AND NOT (v_whole AND NOT s.is_member AND jsonb_typeof(s.new_value) = 'object'
                AND jsonb_typeof(s.old_value) = 'object')
     ORDER BY s.version DESC, 2
     LIMIT p_limit;
END;
$$;

-- ===== sql/106_changes_since.sql
-- sms.changes_since(tenant, fsa, since, slice): what changed after version `since`, for an agent
-- coming back to a state: the number of deltas, the actors and lineages, and each changed path
-- once, with its value at `since` ("old", left out when it did not exist) and now ("new", left
-- out when removed), the last version that changed it and who did. With a slice spec, only the
-- changes that touch the slice. Cost ∝ the deltas since `since`.
CREATE OR REPLACE FUNCTION sms.changes_since(p_tenant_id text, p_fsa_id text, p_since bigint, p_slice text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := CASE WHEN p_slice IS NOT NULL
                            THEN sms.parse_slice(p_slice, sms.aliases_of(p_tenant_id, p_fsa_id)) END;
    v_version bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    v_ops     jsonb;
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_since);
    -- the ops first, then the values they changed: a statement that reads a table calls no
    -- function that reads one (a sharded database runs it on the tenant's node whole)
    SELECT coalesce(jsonb_agg(jsonb_build_array(d.version, coalesce(d.actor, '(anonymous)'), d.lineage_id,
                                                o.op -> 'path')), '[]')
      INTO v_ops
      FROM sms.deltas d
     CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
     WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
       AND (v_parts IS NULL OR sms.touches_slice(jsonb_build_array(o.op), v_parts));
    RETURN (
        WITH ops AS (
            SELECT (op ->> 0)::bigint AS version, op ->> 1 AS actor, op ->> 2 AS lineage_id,
                   ARRAY(SELECT jsonb_array_elements_text(op -> 3)) AS keys
              FROM jsonb_array_elements(v_ops) op
        ), paths AS (
            SELECT keys, max(version) AS last_version, array_agg(DISTINCT actor ORDER BY actor) AS actors
              FROM ops GROUP BY keys
        )
        SELECT jsonb_build_object(
            'since', p_since, 'version', v_version,
            'deltas', (SELECT count(DISTINCT version) FROM ops),
            'actors', coalesce((SELECT jsonb_object_agg(actor, n) FROM (
                                    SELECT actor, count(DISTINCT version) AS n FROM ops GROUP BY actor) a), '{}'),
            'lineages', coalesce((SELECT jsonb_object_agg(lineage_id, n) FROM (
                                      SELECT lineage_id, count(DISTINCT version) AS n FROM ops
                                       WHERE lineage_id IS NOT NULL GROUP BY lineage_id) l), '{}'),
            'changes', coalesce((
                SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                           'path', sms.format_path(p.keys), 'version', p.last_version, 'actors', to_jsonb(p.actors)))
                       || CASE WHEN old IS NULL THEN '{}' ELSE jsonb_build_object('old', old) END
                       || CASE WHEN new IS NULL THEN '{}' ELSE jsonb_build_object('new', new) END
                       ORDER BY sms.format_path(p.keys))
                  FROM paths p,
                       LATERAL sms.value_at(p_tenant_id, p_fsa_id, p.keys, p_since) old,
                       LATERAL sms.read_path(p_tenant_id, p_fsa_id, p.keys) new), '[]'))
          FROM (SELECT 1) one);
END;
$$;

-- ===== sql/112_create_key.sql
-- sms.create_key(key_id, secret_hash, tenants, scopes, ...): records a new API key — its public id
-- and the SHA-256 of the key, which the caller made and shows once (the key itself never reaches
-- the database) — and returns it as sms.list_keys shows keys. Scopes are read, write and admin.
-- The service may only make keys for tenants its admin key names (sms.caller_tenants); SM013
-- otherwise. Raises SM012 for an invalid key.
CREATE OR REPLACE FUNCTION sms.create_key(p_key_id text, p_secret_hash bytea, p_tenants text[], p_scopes text[],
                                          p_actor text DEFAULT NULL, p_aml_level integer DEFAULT NULL,
                                          p_expires_at timestamptz DEFAULT NULL,
                                          p_rate_limit double precision DEFAULT NULL, p_label text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_key     sms.api_keys;
    -- apart from the INSERT, which Citus takes with plain values only (api_keys is a reference table there)
    v_tenants text[] := ARRAY(SELECT DISTINCT t FROM unnest(p_tenants) t ORDER BY t);
    v_scopes  text[] := ARRAY(SELECT s FROM unnest(ARRAY['read', 'write', 'admin']) s WHERE s = ANY (p_scopes));
BEGIN
    IF p_key_id !~ '^k_[A-Za-z0-9]{8,40}$' OR octet_length(p_secret_hash) <> 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a key needs an id k_… and the SHA-256 of its secret';
    END IF;
    IF coalesce(cardinality(p_tenants), 0) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a key names 1 to 100 tenants';
    END IF;
    PERFORM sms.check_id('tenant_id', coalesce(t, '')) FROM unnest(p_tenants) t;
    PERFORM sms.check_id('actor', p_actor), sms.check_id('label', p_label);
    IF coalesce(cardinality(p_scopes), 0) = 0 OR NOT p_scopes <@ ARRAY['read', 'write', 'admin'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'scopes are one or more of read, write, admin';
    END IF;
    IF p_aml_level NOT BETWEEN 0 AND 100 OR p_rate_limit <= 0 OR p_rate_limit > 1e6 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = 'an AML level is 0 to 100, a rate limit above 0 and at most 1,000,000 requests per second';
    END IF;
    IF v_allowed IS NOT NULL AND NOT p_tenants <@ v_allowed THEN
        RAISE EXCEPTION USING ERRCODE = 'SM013',
            MESSAGE = 'a key may only be made for tenants of the key that makes it';
    END IF;
    INSERT INTO sms.api_keys (key_id, secret_hash, tenants, scopes, actor, aml_level, rate_limit, label, expires_at)
    VALUES (p_key_id, p_secret_hash, v_tenants, v_scopes, p_actor, p_aml_level, p_rate_limit, p_label, p_expires_at)
    RETURNING * INTO v_key;
    RETURN to_jsonb(v_key) - 'secret_hash';
END;
$$;
REVOKE ALL ON FUNCTION sms.create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision,
                                         text) TO sms_api;

-- ===== sql/115_revoke_key.sql
-- sms.revoke_key(key_id): revokes an API key from now on and returns it; SM010 (not found) when
-- there is no such key among those the caller may manage. Revoking twice keeps the first time.
CREATE OR REPLACE FUNCTION sms.revoke_key(p_key_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_key     sms.api_keys;
    v_now     timestamptz := now();  -- a value: Citus refuses now() inside coalesce in an UPDATE
BEGIN
    UPDATE sms.api_keys SET revoked_at = coalesce(revoked_at, v_now)
     WHERE key_id = p_key_id AND (v_allowed IS NULL OR tenants <@ v_allowed)
    RETURNING * INTO v_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no API key %s', left(p_key_id, 60));
    END IF;
    RETURN to_jsonb(v_key) - 'secret_hash';
END;
$$;
REVOKE ALL ON FUNCTION sms.revoke_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.revoke_key(text) TO sms_api;

-- ===== sql/131_erase_state.sql
-- sms.erase_state(tenant, fsa, actor, key_id): the purge itself, for sms.purge_state and
-- sms.expire_states, which check who may ask; the service's role may not call it. Under the
-- state's lock (no delta interleaves) and its fence (sms.state_fence: no comment, alias, policy,
-- cached summary or TTL being written is passed) it records the erasure in sms.erasures, then
-- deletes the state's rows from every table of schema sms that has tenant_id and fsa_id columns —
-- found in the catalog, so a table added later is erased too — but sms.erasures; the append-only
-- logs let these deletes through because of that record (sms.refuse_log_change). It then fills in
-- the record's counts and tells the state's subscribers on sms_changes (unless sms.notify is
-- 'off'): {"tenant_id", "fsa_id", "purged": true, "version"}. The state then reads as never
-- written. Returns the record.
CREATE OR REPLACE FUNCTION sms.erase_state(p_tenant_id text, p_fsa_id text, p_actor text, p_key_id text)
RETURNS sms.erasures
LANGUAGE plpgsql AS $$
DECLARE
    v_erasure sms.erasures;
    v_table   text;
    v_count   bigint;
    v_removed jsonb := '{}';
BEGIN
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id, true);
    INSERT INTO sms.erasures (tenant_id, fsa_id, action, actor, key_id, last_version)
    VALUES (p_tenant_id, p_fsa_id, 'purge', p_actor, p_key_id, sms.current_version(p_tenant_id, p_fsa_id))
    RETURNING * INTO v_erasure;
    FOR v_table IN
        SELECT c.relname FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND c.relname <> 'erasures'
           -- not a shard of one (on a Citus node: <table>_<shard id>, beside its table)
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_class t
                            WHERE t.relnamespace = c.relnamespace AND c.relname ~ '_[0-9]+$'
                              AND t.relname = regexp_replace(c.relname, '_[0-9]+$', ''))
           AND (SELECT count(*) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname IN ('tenant_id', 'fsa_id') AND NOT a.attisdropped) = 2
         ORDER BY c.relname = 'states', c.relname  -- the header last
    LOOP
        EXECUTE format('DELETE FROM sms.%I WHERE tenant_id = $1 AND fsa_id = $2', v_table) USING p_tenant_id, p_fsa_id;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_removed := v_removed || jsonb_build_object(v_table, v_count);
    END LOOP;
    UPDATE sms.erasures SET removed = v_removed
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND erasure_id = v_erasure.erasure_id
    RETURNING * INTO v_erasure;
    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('sms_changes', jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
                                                            'purged', true, 'version', v_erasure.last_version)::text);
    END IF;
    RETURN v_erasure;
END;
$$;
REVOKE ALL ON FUNCTION sms.erase_state(text, text, text, text) FROM PUBLIC;
