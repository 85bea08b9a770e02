-- ===== sql/016_entry_history.sql
-- sms.entry_history: every value an entry has held, one row per entry per version that changed
-- it (value NULL: the entry was removed). Together with sms.snapshots it answers "the state at
-- version v" and "from what to what" without replaying operators. Written by sms.put_entry and
-- sms.write_op; append-only.
CREATE TABLE sms.entry_history (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    collection text COLLATE "C" NOT NULL,
    is_member  boolean          NOT NULL,
    member     text COLLATE "C" NOT NULL,
    version    bigint           NOT NULL,
    value      jsonb,
    PRIMARY KEY (tenant_id, fsa_id, collection, is_member, member, version)
);
CREATE INDEX entry_history_by_version ON sms.entry_history (tenant_id, fsa_id, version);

-- ===== sql/017_snapshots.sql
-- sms.snapshots / sms.snapshot_entries: the materialised state every sms.snapshot_every()
-- versions (a copy of its entries), so that reading an old version overlays at most that many
-- versions of sms.entry_history on a snapshot instead of reading the whole history. A baseline
-- snapshot marks where history starts for a state that existed before history was kept.
CREATE TABLE sms.snapshots (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,
    version    bigint      NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    baseline   boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, fsa_id, version)
);
CREATE TABLE sms.snapshot_entries (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    version    bigint           NOT NULL,
    collection text COLLATE "C" NOT NULL,
    is_member  boolean          NOT NULL,
    member     text COLLATE "C" NOT NULL,
    value      jsonb            NOT NULL,
    PRIMARY KEY (tenant_id, fsa_id, version, collection, is_member, member)
);

-- ===== sql/018_task_comments.sql
-- sms.task_comments: comments on tasks (markdown bodies, blockers), append-only like the log.
CREATE TABLE sms.task_comments (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,
    task_id    text        NOT NULL,
    comment_id bigint      GENERATED ALWAYS AS IDENTITY,
    author     text        NOT NULL,
    body       text        NOT NULL,
    is_blocker boolean     NOT NULL DEFAULT false,
    lineage_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, task_id, comment_id)
);

-- ===== sql/019_deltas_by_lineage.sql
-- Index for lineage reports: a lineage's deltas across a tenant's states, in time order.
CREATE INDEX deltas_by_lineage ON sms.deltas (tenant_id, lineage_id, created_at) WHERE lineage_id IS NOT NULL;

-- ===== sql/014_deltas_append_only.sql
-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.%s is append-only: %s is not allowed', TG_TABLE_NAME, TG_OP);
END;
$$;


-- ===== sql/015_refuse_history_rewrite.sql
-- sms.refuse_history_rewrite(): sms.entry_history is append-only, except that the delta being
-- applied may rewrite its own rows (two ops of one delta on one entry leave the entry's final
-- value): a row whose version is above the state's committed version, with the same key.
CREATE OR REPLACE FUNCTION sms.refuse_history_rewrite() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant_id, NEW.fsa_id, NEW.collection, NEW.is_member, NEW.member, NEW.version)
       = (OLD.tenant_id, OLD.fsa_id, OLD.collection, OLD.is_member, OLD.member, OLD.version)
       AND OLD.version > coalesce((SELECT version FROM sms.states
                                    WHERE tenant_id = OLD.tenant_id AND fsa_id = OLD.fsa_id), 0) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'SM008', MESSAGE = 'sms.entry_history is append-only: UPDATE is not allowed';
END;
$$;

-- ===== sql/020_history_append_only.sql
-- entry_history and task_comments are append-only too (sms.refuse_log_change); an entry_history
-- row may only be rewritten by the delta that wrote it (sms.refuse_history_rewrite).
CREATE TRIGGER entry_history_append_only
    BEFORE UPDATE ON sms.entry_history
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_history_rewrite();

CREATE TRIGGER entry_history_no_delete
    BEFORE DELETE ON sms.entry_history
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER entry_history_no_truncate
    BEFORE TRUNCATE ON sms.entry_history
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER task_comments_append_only
    BEFORE UPDATE OR DELETE ON sms.task_comments
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER task_comments_no_truncate
    BEFORE TRUNCATE ON sms.task_comments
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();

-- ===== baseline: history is kept from here on; every existing state gets a snapshot of its
-- current entries, marked as the baseline before which versions cannot be read.
INSERT INTO sms.snapshots (tenant_id, fsa_id, version, baseline)
SELECT tenant_id, fsa_id, version, true FROM sms.states WHERE version > 0;
INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
SELECT e.tenant_id, e.fsa_id, s.version, e.collection, e.is_member, e.member, e.value
  FROM sms.entries e JOIN sms.states s USING (tenant_id, fsa_id)
 WHERE s.version > 0;

-- ===== sql/056_snapshot_every.sql
-- sms.snapshot_every(): how many versions apart snapshots are taken: the setting
-- sms.snapshot_every (SMS_SNAPSHOT_EVERY for the service), 1000 by default. A read of an old
-- version overlays at most this many versions of history on a snapshot.
CREATE OR REPLACE FUNCTION sms.snapshot_every() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(1, coalesce(nullif(current_setting('sms.snapshot_every', true), '')::integer, 1000));
$$;

-- ===== sql/057_take_snapshot.sql
-- sms.take_snapshot(tenant, fsa, version): saves the state's current entries as the snapshot at
-- `version` (the caller holds the state's lock, so the entries are exactly that version's).
CREATE OR REPLACE FUNCTION sms.take_snapshot(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE sql AS $$
    INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_version)
    ON CONFLICT DO NOTHING;
    INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
    SELECT tenant_id, fsa_id, p_version, collection, is_member, member, value
      FROM sms.entries WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
    ON CONFLICT DO NOTHING;
$$;

-- ===== sql/058_brief.sql
-- Text helpers for digests. sms.brief(value): a JSON value as at most 60 characters of text.
CREATE OR REPLACE FUNCTION sms.brief(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_value::text) <= 60 THEN p_value::text ELSE left(p_value::text, 59) || '…' END;
$$;

-- sms.clip(text, chars): the text cut to at most `chars` characters, ending in … when cut.
CREATE OR REPLACE FUNCTION sms.clip(p_text text, p_chars integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN length(p_text) <= p_chars THEN p_text ELSE left(p_text, p_chars - 1) || '…' END;
$$;

-- sms.top_counts(counts, n): {"name": count, ...} as "a (5), b (3), … 4 more", the n largest first.
CREATE OR REPLACE FUNCTION sms.top_counts(p_counts jsonb, p_n integer) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(format('%s (%s)', key, value), ', ' ORDER BY value::integer DESC, key)
           || CASE WHEN (SELECT count(*) FROM jsonb_object_keys(p_counts)) > p_n
                   THEN format(', … %s more', (SELECT count(*) FROM jsonb_object_keys(p_counts)) - p_n) ELSE '' END
      FROM (SELECT key, value FROM jsonb_each(p_counts) ORDER BY value::integer DESC, key LIMIT p_n) top;
$$;

-- ===== sql/059_put_entry.sql
-- sms.put_entry(...): stores one entry's new value given its old one (NULL = absent): insert,
-- update, delete, or nothing when the value did not change; a change is recorded in
-- sms.entry_history. Returns the change in entry count and content bytes (the size of the
-- values' JSON text).
CREATE OR REPLACE FUNCTION sms.put_entry(p_tenant_id text, p_fsa_id text, p_collection text,
                                         p_is_member boolean, p_member text, p_old jsonb, p_new jsonb,
                                         p_version bigint, OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
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

-- ===== sql/069_apply_ops.sql
-- sms.apply_ops(...): applies normalised ops and preconditions (see sms.normalize_delta) to the
-- state (tenant_id, fsa_id); the engine behind sms.apply_delta and sms.replace_state, and what a
-- replay of the log calls with each logged row's ops. Ops are trusted to be normalised (as in
-- sms.deltas.ops); use sms.apply_delta for anything else. Returns {"success": true, "version",
-- "delta_id", "changed": [paths], "duplicate"}.
-- Guarantees:
--   * atomic: the entries, the log row and the NOTIFY commit together or not at all;
--   * serial per state: sms.lock_state serialises writers, versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and the preconditions are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * a type mismatch (SM002) applies nothing;
--   * exactly one NOTIFY on channel sms_changes with ids only (< 1 KB), unless the setting
--     sms.notify is 'off';
--   * every sms.snapshot_every() versions, a snapshot (sms.take_snapshot).
CREATE OR REPLACE FUNCTION sms.apply_ops(
    p_tenant_id        text,
    p_fsa_id           text,
    p_ops              jsonb,
    p_expect           jsonb  DEFAULT '[]',
    p_actor            text   DEFAULT NULL,
    p_lineage_id       text   DEFAULT NULL,
    p_delta_id         uuid   DEFAULT NULL,
    p_expected_version bigint DEFAULT NULL,
    p_meta             jsonb  DEFAULT '{}',
    p_trace_id         text   DEFAULT NULL,
    p_parent_id        text   DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_ops         jsonb := p_ops;
    v_version     bigint;
    v_prior       sms.deltas;
    v_failed      jsonb;
    v_op          jsonb;
    v_entries     bigint := 0;
    v_bytes       bigint := 0;
    v_paths       text[];
    v_collections text[];
    v_payload     text;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('lineage_id', p_lineage_id),
            sms.check_id('trace_id', p_trace_id), sms.check_id('parent_id', p_parent_id);
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        PERFORM sms.raise_invalid('meta', 'meta must be a JSON object');
    END IF;

    v_version := sms.lock_state(p_tenant_id, p_fsa_id);

    IF p_delta_id IS NOT NULL THEN
        SELECT * INTO v_prior FROM sms.deltas
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND delta_id = p_delta_id;
        IF FOUND THEN
            IF v_prior.ops <> v_ops THEN
                RAISE EXCEPTION USING ERRCODE = 'SM005',
                    MESSAGE = format('delta_id %s was already used for a different delta (version %s)',
                                     p_delta_id, v_prior.version),
                    DETAIL = jsonb_build_object('delta_id', p_delta_id, 'version', v_prior.version)::text;
            END IF;
            RETURN jsonb_build_object('success', true, 'version', v_prior.version, 'delta_id', v_prior.delta_id,
                                      'changed', to_jsonb(v_prior.paths), 'duplicate', true);
        END IF;
    END IF;

    IF p_expected_version IS NOT NULL AND p_expected_version <> v_version THEN
        RAISE EXCEPTION USING ERRCODE = 'SM003',
            MESSAGE = format('expected version %s, but the state is at version %s', p_expected_version, v_version),
            DETAIL = jsonb_build_object('current_version', v_version,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, v_ops))::text;
    END IF;

    SELECT jsonb_agg(sms.format_path(k)) INTO v_failed
      FROM jsonb_array_elements(coalesce(p_expect, '[]')) e,
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(e -> 'path'))) p(k),
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) cur
     WHERE CASE WHEN e ? 'exists' THEN (cur IS NOT NULL) <> (e ->> 'exists')::boolean
                ELSE cur IS DISTINCT FROM e -> 'value' END;
    IF v_failed IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SM004',
            MESSAGE = format('$expect failed at %s', (SELECT string_agg(format('"%s"', f), ', ')
                                                       FROM jsonb_array_elements_text(v_failed) f)),
            DETAIL = jsonb_build_object('current_version', v_version, 'failed', v_failed,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, p_expect))::text;
    END IF;

    v_version := v_version + 1;
    FOR v_op IN SELECT value FROM jsonb_array_elements(v_ops) LOOP
        SELECT v_entries + w.entry_delta, v_bytes + w.byte_delta INTO v_entries, v_bytes
          FROM sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op) w;
    END LOOP;

    SELECT array_agg(sms.format_path(k) ORDER BY n), array_agg(DISTINCT k[1])
      INTO v_paths, v_collections
      FROM jsonb_array_elements(v_ops) WITH ORDINALITY o(op, n),
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(op -> 'path'))) p(k);

    INSERT INTO sms.deltas (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, parent_id,
                            meta, ops, paths, collections)
    VALUES (p_tenant_id, p_fsa_id, v_version, coalesce(p_delta_id, gen_random_uuid()), p_actor, p_lineage_id,
            p_trace_id, p_parent_id, coalesce(p_meta, '{}'), v_ops, v_paths, v_collections)
    RETURNING * INTO v_prior;

    UPDATE sms.states
       SET version = v_version, updated_at = now(),
           entry_count = entry_count + v_entries, content_bytes = content_bytes + v_bytes
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;

    IF v_version % sms.snapshot_every() = 0 THEN
        PERFORM sms.take_snapshot(p_tenant_id, p_fsa_id, v_version);
    END IF;

    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        v_payload := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                        'delta_id', v_prior.delta_id, 'actor', p_actor,
                                        'lineage_id', p_lineage_id, 'collections', to_jsonb(v_collections))::text;
        IF octet_length(v_payload) > 1000 THEN
            -- many or long collection names: send ids only; subscribers read the rest from the log
            v_payload := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                            'delta_id', v_prior.delta_id, 'truncated', true)::text;
        END IF;
        PERFORM pg_notify('sms_changes', v_payload);
    END IF;

    RETURN jsonb_build_object('success', true, 'version', v_version, 'delta_id', v_prior.delta_id,
                              'changed', to_jsonb(v_paths), 'duplicate', false);
END;
$$;

-- ===== sql/100_entry_at.sql
-- sms.entry_at(tenant, fsa, collection, is_member, member, version): one entry's value at a
-- version (NULL: absent): its latest change up to that version, or else its value in the latest
-- snapshot up to it. Index probes only.
CREATE OR REPLACE FUNCTION sms.entry_at(p_tenant_id text, p_fsa_id text, p_collection text, p_is_member boolean,
                                        p_member text, p_version bigint)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN h.found THEN h.value ELSE s.value END
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
$$;

-- ===== sql/101_entries_at.sql
-- sms.entries_at(tenant, fsa, version): the state's entries as they were at a version: the latest
-- snapshot up to it, overlaid with the entry changes after that snapshot. Cost ∝ the state's size
-- plus at most sms.snapshot_every() versions of changes, however far back the version is.
CREATE OR REPLACE FUNCTION sms.entries_at(p_tenant_id text, p_fsa_id text, p_version bigint)
RETURNS TABLE (collection text, is_member boolean, member text, value jsonb)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
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
$$;

-- ===== sql/102_check_version.sql
-- sms.check_version(tenant, fsa, version): raises SM010 (not found) unless the state's history
-- holds that version: 0 up to the current version, and not before a baseline snapshot (history
-- is kept from the version a state had when history keeping was installed).
CREATE OR REPLACE FUNCTION sms.check_version(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_current  bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    v_baseline bigint := (SELECT max(version) FROM sms.snapshots
                           WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND baseline);
BEGIN
    IF p_version IS NULL OR p_version < 0 OR p_version > v_current THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('version %s does not exist: the state is at version %s', p_version, v_current),
            DETAIL = jsonb_build_object('current_version', v_current)::text;
    END IF;
    IF p_version < v_baseline THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('version %s is older than the kept history, which starts at version %s',
                             p_version, v_baseline),
            DETAIL = jsonb_build_object('current_version', v_current, 'history_from', v_baseline)::text;
    END IF;
END;
$$;

-- ===== sql/103_document_at.sql
-- sms.document_at(tenant, fsa, version): the full state exactly as it was at a version (time
-- travel), assembled like sms.document from sms.entries_at. SM010 for a version the state never
-- had.
CREATE OR REPLACE FUNCTION sms.document_at(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_version);
    RETURN (
        SELECT coalesce(jsonb_object_agg(collection,
                   CASE WHEN jsonb_typeof(top) = 'object' THEN coalesce(members, '{}') ELSE top END), '{}')
          FROM (SELECT collection,
                       (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                       jsonb_object_agg(member, value) FILTER (WHERE is_member) AS members
                  FROM sms.entries_at(p_tenant_id, p_fsa_id, p_version)
                 GROUP BY collection) c
         WHERE top IS NOT NULL);
END;
$$;

-- ===== sql/104_value_at.sql
-- sms.value_at(tenant, fsa, keys, version): the value at a path at a version (NULL: absent), from
-- the one or two entries on the path (a whole collection only when the path names it).
CREATE OR REPLACE FUNCTION sms.value_at(p_tenant_id text, p_fsa_id text, p_keys text[], p_version bigint)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_top jsonb := sms.entry_at(p_tenant_id, p_fsa_id, p_keys[1], false, '', p_version);
BEGIN
    IF v_top IS NULL OR jsonb_typeof(v_top) <> 'object' THEN
        RETURN v_top #> p_keys[2:];
    ELSIF cardinality(p_keys) > 1 THEN
        RETURN sms.entry_at(p_tenant_id, p_fsa_id, p_keys[1], true, p_keys[2], p_version) #> p_keys[3:];
    END IF;
    RETURN (SELECT coalesce(jsonb_object_agg(member, value), '{}')
              FROM sms.entries_at(p_tenant_id, p_fsa_id, p_version)
             WHERE collection = p_keys[1] AND is_member);
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
BEGIN
    RETURN QUERY
    WITH changes AS (
        -- the top-level row (the value itself, or the marker of an object) ...
        SELECT h.version, h.is_member, h.member,
               CASE WHEN NOT v_whole THEN h.value #> v_keys[2:]
                    WHEN jsonb_typeof(h.value) = 'object'   -- the marker: the collection as it was then
                    THEN sms.value_at(p_tenant_id, p_fsa_id, v_keys, h.version)
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
    v_parts   jsonb := CASE WHEN p_slice IS NOT NULL THEN sms.parse_slice(p_slice) END;
    v_version bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_since);
    RETURN (
        WITH ops AS (
            SELECT d.version, coalesce(d.actor, '(anonymous)') AS actor, d.lineage_id,
                   ARRAY(SELECT jsonb_array_elements_text(o.op -> 'path')) AS keys
              FROM sms.deltas d
             CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
             WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
               AND (v_parts IS NULL OR sms.touches_slice(jsonb_build_array(o.op), v_parts))
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

-- ===== sql/107_changes_digest.sql
-- sms.changes_digest(tenant, fsa, since, slice, max_tokens): sms.changes_since as deterministic,
-- LLM-ready text within a token budget (tokens estimated as characters / 4): who changed the
-- state since `since` (the five most active, and how many more), in which lineages, then one
-- line per changed path, old -> new, as many as the budget holds.
CREATE OR REPLACE FUNCTION sms.changes_digest(p_tenant_id text, p_fsa_id text, p_since bigint,
                                              p_slice text DEFAULT NULL, p_max_tokens integer DEFAULT 300)
RETURNS text
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_changes jsonb := sms.changes_since(p_tenant_id, p_fsa_id, p_since, p_slice);
    v_budget  integer := greatest(p_max_tokens, 20) * 4;
    v_text    text;
    v_line    text;
    v_left    integer;
    v_change  jsonb;
BEGIN
    IF (v_changes ->> 'deltas')::integer = 0 THEN
        RETURN sms.clip(format('No changes to %s/%s%s since v%s (now v%s).', p_tenant_id, p_fsa_id,
                               CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END, p_since,
                               v_changes -> 'version'), v_budget);
    END IF;
    -- the header's essentials first; who and in which lineages only where the budget allows,
    -- always keeping room (40 characters) to say how many paths were left out
    v_text := format('Changes to %s/%s%s v%s -> v%s: %s deltas', p_tenant_id, p_fsa_id,
                     CASE WHEN p_slice IS NOT NULL THEN ' in ' || p_slice ELSE '' END, p_since,
                     v_changes -> 'version', v_changes -> 'deltas');
    IF length(v_text) + 40 > v_budget THEN
        RETURN sms.clip(v_text, v_budget);
    END IF;
    v_line := ' by ' || sms.top_counts(v_changes -> 'actors', 5);
    IF length(v_text) + length(v_line) + 40 <= v_budget THEN
        v_text := v_text || v_line;
    END IF;
    IF v_changes -> 'lineages' <> '{}' THEN
        v_line := '; lineages ' || sms.top_counts(v_changes -> 'lineages', 5);
        IF length(v_text) + length(v_line) + 40 <= v_budget THEN
            v_text := v_text || v_line;
        END IF;
    END IF;
    v_left := jsonb_array_length(v_changes -> 'changes');
    FOR v_change IN SELECT value FROM jsonb_array_elements(v_changes -> 'changes') LOOP
        v_line := format(E'\n- %s: %s -> %s (v%s, %s)', v_change ->> 'path',
                         coalesce(sms.brief(v_change -> 'old'), '(absent)'), coalesce(sms.brief(v_change -> 'new'), '(removed)'),
                         v_change -> 'version', (SELECT string_agg(a, ', ') FROM jsonb_array_elements_text(v_change -> 'actors') a));
        IF length(v_text) + length(v_line) + 40 > v_budget THEN
            RETURN v_text || format(E'\n… %s more changed paths not shown', v_left);
        END IF;
        v_text := v_text || v_line;
        v_left := v_left - 1;
    END LOOP;
    RETURN v_text;
END;
$$;

-- ===== sql/108_rollback.sql
-- sms.rollback(tenant, fsa, to_version, ...): a new delta that restores the content the state had
-- at `to_version` (sms.document_at), applied like sms.replace_state: the log stays append-only,
-- the rollback is itself a logged delta with its actor and lineage (meta.rollback_to) and its
-- NOTIFY. Same arguments and result as sms.replace_state.
CREATE OR REPLACE FUNCTION sms.rollback(
    p_tenant_id        text,
    p_fsa_id           text,
    p_to_version       bigint,
    p_actor            text   DEFAULT NULL,
    p_lineage_id       text   DEFAULT NULL,
    p_delta_id         uuid   DEFAULT NULL,
    p_expected_version bigint DEFAULT NULL,
    p_meta             jsonb  DEFAULT '{}',
    p_trace_id         text   DEFAULT NULL,
    p_parent_id        text   DEFAULT NULL
) RETURNS jsonb
LANGUAGE sql AS $$
    SELECT sms.replace_state(p_tenant_id, p_fsa_id, sms.document_at(p_tenant_id, p_fsa_id, p_to_version), p_actor,
                             p_lineage_id, p_delta_id, p_expected_version,
                             coalesce(p_meta, '{}') || jsonb_build_object('rollback_to', p_to_version),
                             p_trace_id, p_parent_id);
$$;

-- ===== sql/109_heartbeat.sql
-- sms.heartbeat(tenant, fsa, agent, ...): records agents_online.<agent> as the latest time the
-- agent was seen ($max of an ISO-8601 UTC timestamp, so late or concurrent heartbeats never move
-- it back). Touches only that entry, so cached summaries of other collections stay valid.
CREATE OR REPLACE FUNCTION sms.heartbeat(p_tenant_id text, p_fsa_id text, p_agent text,
                                         p_lineage_id text DEFAULT NULL, p_at timestamptz DEFAULT now())
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sms.check_id('agent', coalesce(p_agent, ''));
    RETURN sms.apply_ops(p_tenant_id, p_fsa_id,
        jsonb_build_array(jsonb_build_object(
            'path', jsonb_build_array('agents_online', p_agent), 'op', 'max',
            'value', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))),
        '[]', p_agent, p_lineage_id, NULL, NULL, jsonb_build_object('heartbeat', true));
END;
$$;

-- ===== sql/110_add_comment.sql
-- sms.add_comment(tenant, fsa, task_id, author, body, is_blocker, lineage_id): appends a comment
-- to an existing task (tasks.<task_id>); SM010 (not found) and nothing stored when there is no
-- such task. Bodies are markdown, 1 to 65536 characters. Returns the stored comment.
CREATE OR REPLACE FUNCTION sms.add_comment(p_tenant_id text, p_fsa_id text, p_task_id text, p_author text,
                                           p_body text, p_is_blocker boolean DEFAULT false,
                                           p_lineage_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_comment sms.task_comments;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('task_id', coalesce(p_task_id, '')), sms.check_id('author', coalesce(p_author, '')),
            sms.check_id('lineage_id', p_lineage_id);
    IF p_body IS NULL OR length(p_body) NOT BETWEEN 1 AND 65536 THEN
        PERFORM sms.raise_invalid('body', 'a comment body is 1 to 65536 characters of markdown');
    END IF;
    IF NOT EXISTS (SELECT FROM sms.entries WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
                                             AND collection = 'tasks' AND is_member AND member = p_task_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('task %s does not exist in %s/%s', p_task_id, p_tenant_id, p_fsa_id),
            DETAIL = jsonb_build_object('path', sms.format_path(ARRAY['tasks', p_task_id]))::text;
    END IF;
    INSERT INTO sms.task_comments (tenant_id, fsa_id, task_id, author, body, is_blocker, lineage_id)
    VALUES (p_tenant_id, p_fsa_id, p_task_id, p_author, p_body, coalesce(p_is_blocker, false), p_lineage_id)
    RETURNING * INTO v_comment;
    RETURN to_jsonb(v_comment);
END;
$$;

-- ===== sql/120_delta_lineage.sql
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

-- ===== sql/121_actor_activity.sql
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

-- ===== sql/122_path_history.sql
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

