-- Frozen copy of what revision 0018 installs (the sql/ files as they were), run as one script.

-- ===== sql/013_feed.sql
-- The tenant's change feed: the order in which a tenant's transactions committed their deltas,
-- carried by the tenant's own rows (DESIGN §7, §14), so that it holds on one server and on a
-- cluster sharded by tenant alike, and survives the tenant moving between nodes — where
-- transaction ids, sequences and snapshots are one node's and mean nothing on the next.
--   sms.feed         one row per transaction and state that applied deltas: the versions it made
--                    (from_version .. to_version) and its position in the tenant's feed
--   sms.feed_clocks  one row per tenant: the last position handed out
-- A transaction's row gets its position when it commits (sms.place_in_feed, a deferred trigger),
-- from the tenant's clock row, whose lock it then holds until the commit is done: the tenant's
-- next transaction gets the next position only once this one is visible. So positions become
-- visible in order, and a reader that has seen position n has seen every position before it
-- (sms.feed_after) — while a transaction that is slow, or held open, delays nobody until it
-- commits.
CREATE TABLE sms.feed (
    tenant_id    text   NOT NULL,
    fsa_id       text   NOT NULL,
    to_version   bigint NOT NULL,
    from_version bigint NOT NULL,
    position     bigint,
    PRIMARY KEY (tenant_id, fsa_id, to_version),
    UNIQUE (tenant_id, position)
);

CREATE TABLE sms.feed_clocks (
    tenant_id text   NOT NULL PRIMARY KEY,
    position  bigint NOT NULL
);

-- ===== the deltas already logged take their places in the feed, in the order the old feed read them
INSERT INTO sms.feed (tenant_id, fsa_id, to_version, from_version, position)
SELECT tenant_id, fsa_id, to_version, from_version, row_number() OVER (PARTITION BY tenant_id ORDER BY tx_id, fsa_id)
  FROM (SELECT tenant_id, fsa_id, tx_id, min(version) AS from_version, max(version) AS to_version
          FROM sms.deltas GROUP BY tenant_id, fsa_id, tx_id) made;
INSERT INTO sms.feed_clocks (tenant_id, position)
SELECT tenant_id, max(position) FROM sms.feed GROUP BY tenant_id;
DROP FUNCTION sms.feed_after(text, text, xid8, text, bigint, integer);
DROP FUNCTION sms.notify_versions(text, text, bigint[]);
ALTER TABLE sms.deltas DROP COLUMN tx_id;

-- ===== sql/067_publish.sql
-- sms.publish(tenant, fsa, from_version, to_version, notice): puts the versions a transaction made
-- of one state into the tenant's feed (sms.feed; its position comes at commit, sms.place_in_feed)
-- and sends `notice` on channel sms_changes, delivered at commit too, unless the setting
-- sms.notify is 'off' (NOTIFY only wakes readers; the feed is what they read).
CREATE OR REPLACE FUNCTION sms.publish(p_tenant_id text, p_fsa_id text, p_from_version bigint,
                                       p_to_version bigint, p_notice jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms.feed (tenant_id, fsa_id, to_version, from_version)
    VALUES (p_tenant_id, p_fsa_id, p_to_version, p_from_version);
    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('sms_changes', p_notice::text);
    END IF;
END;
$$;

-- sms.place_in_feed(): gives a transaction's new row of sms.feed the tenant's next position, when
-- the transaction commits (a deferred constraint trigger), taking the tenant's clock row for the
-- rest of the commit (sql/013_feed.sql says why).
CREATE OR REPLACE FUNCTION sms.place_in_feed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_position bigint;
BEGIN
    INSERT INTO sms.feed_clocks AS c (tenant_id, position) VALUES (NEW.tenant_id, 1)
    ON CONFLICT (tenant_id) DO UPDATE SET position = c.position + 1
    RETURNING c.position INTO v_position;
    UPDATE sms.feed SET position = v_position
     WHERE tenant_id = NEW.tenant_id AND fsa_id = NEW.fsa_id AND to_version = NEW.to_version;
    RETURN NULL;
END;
$$;

CREATE CONSTRAINT TRIGGER feed_place
    AFTER INSERT ON sms.feed
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION sms.place_in_feed();

-- ===== sql/068_append_delta.sql
-- sms.append_delta(...): the engine behind sms.apply_ops: under the state's lock it checks the
-- idempotency key, the expected version and the preconditions, writes the ops, appends the log row,
-- takes a snapshot when one is due and notifies. With policy targets (sms.policy_targets) it reads
-- the guarded values before and after writing and raises SM011 when the delta breaks a rule, so
-- that sms.apply_ops can undo it and record the refusal. Call sms.apply_ops, never this.
-- Guarantees (for sms.apply_ops):
--   * atomic: the entries, the log row, its place in the tenant's feed and the NOTIFY commit
--     together or not at all;
--   * serial per state: sms.lock_state serialises writers, versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and the preconditions are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * a type mismatch (SM002) applies nothing;
--   * published (sms.publish): a place in the tenant's feed and exactly one NOTIFY on channel
--     sms_changes with ids only (< 1 KB, unless the setting sms.notify is 'off') — or, inside
--     sms.apply_deltas (the setting sms.batch), one for the whole batch at its end;
--   * every sms.snapshot_every() versions, a snapshot (sms.take_snapshot).
CREATE OR REPLACE FUNCTION sms.append_delta(
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
    p_parent_id        text   DEFAULT NULL,
    p_targets          jsonb  DEFAULT NULL
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
    v_notice      jsonb;
    v_before      jsonb;
    v_violations  jsonb;
BEGIN
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

    IF p_targets IS NOT NULL THEN
        v_before := sms.policy_values(p_tenant_id, p_fsa_id, p_targets);
    END IF;
    v_version := v_version + 1;
    FOR v_op IN SELECT value FROM jsonb_array_elements(v_ops) LOOP
        SELECT v_entries + w.entry_delta, v_bytes + w.byte_delta INTO v_entries, v_bytes
          FROM sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op) w;
    END LOOP;
    IF p_targets IS NOT NULL THEN
        v_violations := sms.policy_violations(p_targets, v_before, sms.policy_values(p_tenant_id, p_fsa_id, p_targets),
                                              sms.aml_level(p_meta));
        IF v_violations IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'SM011',
                MESSAGE = 'policy violation: ' || (v_violations -> 0 ->> 'message')
                          || CASE WHEN jsonb_array_length(v_violations) > 1
                                  THEN format(' (and %s more)', jsonb_array_length(v_violations) - 1) ELSE '' END,
                DETAIL = jsonb_build_object('violations', v_violations, 'current_version', v_version - 1)::text;
        END IF;
    END IF;

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

    IF coalesce(current_setting('sms.batch', true), '') <> 'on' THEN  -- a batch publishes once, at its end
        v_notice := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                       'delta_id', v_prior.delta_id, 'actor', p_actor,
                                       'lineage_id', p_lineage_id, 'collections', to_jsonb(v_collections));
        IF octet_length(v_notice::text) > 1000 THEN
            -- many or long collection names: send ids only; subscribers read the rest from the log
            v_notice := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                           'delta_id', v_prior.delta_id, 'truncated', true);
        END IF;
        PERFORM sms.publish(p_tenant_id, p_fsa_id, v_version, v_version, v_notice);
    END IF;

    RETURN jsonb_build_object('success', true, 'version', v_version, 'delta_id', v_prior.delta_id,
                              'changed', to_jsonb(v_paths), 'duplicate', false);
END;
$$;

-- ===== sql/072_apply_deltas.sql
-- sms.write_error(sqlstate): whether an error belongs to one write of a batch — its delta or its
-- metadata (SM codes; data, integrity and size errors; a row of another tenant) — rather than to the
-- whole call (a timeout, a shutdown, a missing schema), which fails every write of it.
CREATE OR REPLACE FUNCTION sms.write_error(p_sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(p_sqlstate, 2) IN ('SM', '22', '23', '54') OR p_sqlstate = '42501';
$$;

-- sms.apply_write(tenant, fsa, write): sms.apply_delta for one write of a batch, given as
-- {"delta", "actor", "lineage_id", "delta_id", "expected_version", "meta", "trace_id", "parent_id"}
-- (only "delta" is required).
CREATE OR REPLACE FUNCTION sms.apply_write(p_tenant_id text, p_fsa_id text, p_write jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_write) IS DISTINCT FROM 'object' OR NOT p_write ? 'delta' THEN
        PERFORM sms.raise_invalid('', 'each write of a batch is an object with its "delta" and its metadata');
    END IF;
    IF p_write ->> 'delta_id' !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' THEN
        PERFORM sms.raise_invalid('delta_id', 'delta_id must be a UUID');
    END IF;
    IF p_write ? 'expected_version' AND jsonb_typeof(p_write -> 'expected_version') NOT IN ('number', 'null') THEN
        PERFORM sms.raise_invalid('expected_version', 'expected_version must be a version number');
    END IF;
    RETURN sms.apply_delta(p_tenant_id, p_fsa_id, p_write -> 'delta', p_write ->> 'actor', p_write ->> 'lineage_id',
                           (p_write ->> 'delta_id')::uuid, (p_write ->> 'expected_version')::bigint,
                           coalesce(p_write -> 'meta', '{}'), p_write ->> 'trace_id', p_write ->> 'parent_id');
END;
$$;

-- sms.apply_deltas(tenant, fsa, writes, atomic): applies a batch of writes (a JSON array of what
-- sms.apply_write takes) to one state in this transaction, in order, and returns their results in
-- order: each exactly what sms.apply_delta would have answered alone, at the version it got, or,
-- for a write it refused, {"success": false, "sqlstate", "message", "detail"} (the error it
-- would have raised) or the policy refusal sms.apply_ops returns. This is group commit (DESIGN
-- §11): many deltas, one transaction, one WAL flush, one NOTIFY.
--   * independent (the default): each write runs in a subtransaction of its own, so one that fails
--     is refused alone and the others commit, with gap-free versions;
--   * atomic: all or nothing. The first write that fails stops the batch and rolls it back; its
--     result is its error (a policy refusal stays recorded in sms.refusals), every other write's
--     is SM014 (not applied).
-- The state's lock is taken once, first, for the whole batch. Errors that are not a write's own
-- (a timeout, a shutdown) fail the call. The versions the batch made take one place in the
-- tenant's feed, and one NOTIFY on sms_changes carries their range (sms.publish): {"tenant_id",
-- "fsa_id", "version" (the last), "from_version", "deltas" (how many)}.
CREATE OR REPLACE FUNCTION sms.apply_deltas(
    p_tenant_id text,
    p_fsa_id    text,
    p_writes    jsonb,
    p_atomic    boolean DEFAULT false
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_batch   text := current_setting('sms.batch', true);
    v_made    bigint[];
    v_results jsonb[] := '{}';
    v_result  jsonb;
    v_write   jsonb;
    v_index   integer := 0;
    v_state   text;
    v_message text;
    v_detail  text;
BEGIN
    IF jsonb_typeof(p_writes) IS DISTINCT FROM 'array' THEN
        PERFORM sms.raise_invalid('', 'a batch is a JSON array of writes');
    END IF;
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    PERFORM set_config('sms.batch', 'on', true);  -- its writes do not publish: the batch does, once

    IF p_atomic THEN
        BEGIN
            FOR v_write IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
                v_index := v_index + 1;
                v_result := sms.apply_write(p_tenant_id, p_fsa_id, v_write);
                IF (v_result ->> 'success')::boolean IS NOT TRUE THEN
                    RAISE EXCEPTION USING ERRCODE = 'SM014', MESSAGE = 'a write of the batch was refused';
                END IF;
                v_results := v_results || v_result;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            IF v_state = 'SM014' THEN
                -- a policy refusal: the rollback took its record with it, so it is recorded again
                v_result := sms.record_refusal(p_tenant_id, p_fsa_id, sms.normalize_delta(v_write -> 'delta') -> 'ops',
                                               v_write ->> 'actor', v_write ->> 'lineage_id',
                                               (v_write ->> 'delta_id')::uuid, coalesce(v_write -> 'meta', '{}'),
                                               v_write ->> 'trace_id', v_result ->> 'message',
                                               jsonb_build_object('current_version', v_result -> 'version',
                                                                  'violations', v_result -> 'violations'));
            ELSIF sms.write_error(v_state) THEN
                v_result := jsonb_build_object('success', false, 'sqlstate', v_state, 'message', v_message,
                                               'detail', v_detail);
            ELSE
                RAISE;
            END IF;
            SELECT array_agg(CASE WHEN n = v_index THEN v_result
                                  ELSE jsonb_build_object(
                                      'success', false, 'sqlstate', 'SM014',
                                      'message', format('not applied: write %s of the batch failed', v_index - 1),
                                      'detail', jsonb_build_object('index', v_index - 1)::text) END ORDER BY n)
              INTO v_results
              FROM generate_series(1, jsonb_array_length(p_writes)) n;
        END;
    ELSE
        FOR v_write IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
            BEGIN
                v_result := sms.apply_write(p_tenant_id, p_fsa_id, v_write);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL;
                IF NOT sms.write_error(v_state) THEN
                    RAISE;
                END IF;
                v_result := jsonb_build_object('success', false, 'sqlstate', v_state, 'message', v_message,
                                               'detail', v_detail);
            END;
            v_results := v_results || v_result;
        END LOOP;
    END IF;

    PERFORM set_config('sms.batch', coalesce(v_batch, ''), true);
    SELECT array_agg((r ->> 'version')::bigint) INTO v_made FROM unnest(v_results) r
     WHERE (r ->> 'success')::boolean AND NOT (r ->> 'duplicate')::boolean;
    IF v_made IS NOT NULL THEN
        -- gap-free: a refused write took no version
        PERFORM sms.publish(p_tenant_id, p_fsa_id, v_made[1], v_made[cardinality(v_made)],
                            jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
                                               'version', v_made[cardinality(v_made)], 'from_version', v_made[1],
                                               'deltas', cardinality(v_made)));
    END IF;
    RETURN to_jsonb(v_results);
END;
$$;

-- ===== sql/091_feed_after.sql
-- sms.feed_after(tenant, fsa, after_position, after_version, limit): the deltas of a tenant (or of
-- one state when fsa is given) after a place in its feed, oldest first, for subscribers; each with
-- its feed position (0 for one state's feed, which goes by version alone).
-- One state's versions are assigned under the state's lock, so they commit in order and
-- `version > after_version` never skips one. A tenant's feed is read in the order of sms.feed,
-- whose positions become visible in order (sql/013_feed.sql): what a reader has not seen yet always
-- comes after what it has seen. NOTIFY only wakes readers; this is what they read.
-- PL/pgSQL, not SQL: a sharded database (Citus) cannot plan a table-reading SQL function.
CREATE OR REPLACE FUNCTION sms.feed_after(p_tenant_id text, p_fsa_id text, p_after_position bigint,
                                          p_after_version bigint, p_limit integer)
RETURNS TABLE (tenant_id text, fsa_id text, version bigint, delta_id uuid, actor text, lineage_id text,
               trace_id text, parent_id text, meta jsonb, ops jsonb, paths text[], collections text[],
               created_at timestamptz, feed_position bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    IF p_fsa_id IS NOT NULL THEN
        RETURN QUERY
        SELECT d.tenant_id, d.fsa_id, d.version, d.delta_id, d.actor, d.lineage_id, d.trace_id, d.parent_id,
               d.meta, d.ops, d.paths, d.collections, d.created_at, 0::bigint
          FROM sms.deltas d
         WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_after_version
         ORDER BY d.version
         LIMIT p_limit;
    ELSE
        RETURN QUERY
        SELECT d.tenant_id, d.fsa_id, d.version, d.delta_id, d.actor, d.lineage_id, d.trace_id, d.parent_id,
               d.meta, d.ops, d.paths, d.collections, d.created_at, f.position
          FROM sms.feed f
          JOIN sms.deltas d
            ON d.tenant_id = f.tenant_id AND d.fsa_id = f.fsa_id AND d.version BETWEEN f.from_version AND f.to_version
         WHERE f.tenant_id = p_tenant_id AND d.tenant_id = p_tenant_id AND f.position >= p_after_position
           AND (f.position, d.version) > (p_after_position, p_after_version)  -- NULL: not committed
         ORDER BY f.position, d.version
         LIMIT p_limit;
    END IF;
END;
$$;

-- sms.feed_position(tenant, fsa, version): the position in the tenant's feed of the transaction
-- that made this version of the state (where a tenant subscriber resuming from "fsa:version"
-- stands); NULL when the log holds no such version.
CREATE OR REPLACE FUNCTION sms.feed_position(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT f.position FROM sms.feed f
             WHERE f.tenant_id = p_tenant_id AND f.fsa_id = p_fsa_id
               AND f.to_version >= p_version AND f.from_version <= p_version
             ORDER BY f.to_version
             LIMIT 1);
END;
$$;

-- ===== sql/136_compact.sql
-- sms.compact(tenant, fsa, before_version, actor, key_id): drops the state's log and history
-- older than a snapshot at `before_version` (taken now from the history if there is none), so
-- that they stop growing with the state's age (DESIGN §14). Afterwards time travel and replay
-- start at that snapshot: the state at `before_version` and later reads as before, and its
-- deltas after it are kept; an older version, or the log after one (sms.check_version,
-- sms.check_since), is SM015 (history compacted). What goes: the deltas up to `before_version`,
-- the older snapshots, and the history rows up to it but the last one of each entry that exists
-- there (so that a path's history still says what its next change changed it from). Under the
-- state's lock; recorded in sms.erasures (action 'compact', through_version) with the rows each
-- table lost. `before_version` runs from 1 to the current version (SM010 beyond, like time
-- travel), and not below an earlier compaction point (SM015). The service may compact only
-- states of the tenants it acts for (sms.caller_tenants). Returns the record.
CREATE OR REPLACE FUNCTION sms.compact(p_tenant_id text, p_fsa_id text, p_before_version bigint,
                                       p_actor text DEFAULT NULL, p_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_erasure sms.erasures;
    v_deltas  bigint;
    v_history bigint;
    v_entries bigint;
    v_snaps   bigint;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('key_id', p_key_id);
    IF v_allowed IS NOT NULL AND NOT p_tenant_id = ANY (v_allowed) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no state %s/%s', p_tenant_id, p_fsa_id);
    END IF;
    IF p_before_version IS NULL OR p_before_version < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'before_version is the version to keep the state from: 1 or more';
    END IF;
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_before_version);

    IF NOT EXISTS (SELECT FROM sms.snapshots
                    WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version = p_before_version) THEN
        -- its entries first: sms.entries_at reads the latest snapshot up to the version
        INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
        SELECT p_tenant_id, p_fsa_id, p_before_version, e.collection, e.is_member, e.member, e.value
          FROM sms.entries_at(p_tenant_id, p_fsa_id, p_before_version) e;
        INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_before_version);
    END IF;
    INSERT INTO sms.erasures (tenant_id, fsa_id, action, actor, key_id, last_version, through_version)
    VALUES (p_tenant_id, p_fsa_id, 'compact', p_actor, p_key_id, sms.current_version(p_tenant_id, p_fsa_id),
            p_before_version)
    RETURNING * INTO v_erasure;

    DELETE FROM sms.deltas WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version <= p_before_version;
    GET DIAGNOSTICS v_deltas = ROW_COUNT;
    DELETE FROM sms.feed WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND to_version <= p_before_version;
    DELETE FROM sms.entry_history h
     USING (SELECT o.collection, o.is_member, o.member, o.version, o.value IS NULL AS removal,
                   max(o.version) OVER (PARTITION BY o.collection, o.is_member, o.member) AS last
              FROM sms.entry_history o
             WHERE o.tenant_id = p_tenant_id AND o.fsa_id = p_fsa_id AND o.version <= p_before_version) old
     WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id
       AND (h.collection, h.is_member, h.member, h.version) = (old.collection, old.is_member, old.member, old.version)
       AND (old.version < old.last OR old.removal);
    GET DIAGNOSTICS v_history = ROW_COUNT;
    DELETE FROM sms.snapshot_entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version < p_before_version;
    GET DIAGNOSTICS v_entries = ROW_COUNT;
    DELETE FROM sms.snapshots WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version < p_before_version;
    GET DIAGNOSTICS v_snaps = ROW_COUNT;

    UPDATE sms.erasures
       SET removed = jsonb_build_object('deltas', v_deltas, 'entry_history', v_history,
                                        'snapshot_entries', v_entries, 'snapshots', v_snaps)
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND erasure_id = v_erasure.erasure_id
    RETURNING * INTO v_erasure;
    RETURN to_jsonb(v_erasure) - 'tx_id';
END;
$$;
REVOKE ALL ON FUNCTION sms.compact(text, text, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.compact(text, text, bigint, text, text) TO sms_api;

-- ===== sql/180_tenant_isolation.sql (the feed's tables)
ALTER TABLE sms.feed ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.feed USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.feed TO sms_api;

ALTER TABLE sms.feed_clocks ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.feed_clocks USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.feed_clocks TO sms_api;
