-- Frozen copy of what revision 0020 installs (the sql/ files as they were), run as one script.

-- ===== sql/014_deltas_append_only.sql
-- sms.written_by_this_transaction(xmin): whether a row that the caller sees, and whose xmin (a
-- system column) it read on this node, was written by the current transaction or one of its
-- subtransactions (a savepoint: a driver's nested transaction, psql's ON_ERROR_ROLLBACK). The row
-- is seen, so it is committed or the transaction's own: its own when its writer's id is this
-- transaction's, or a later one still under way (pg_xact_status knows a subtransaction's, released
-- or not). The 32-bit xmin is widened against the transaction's 64-bit id; a frozen row keeps its
-- raw xmin, so a row frozen 2^31 transactions ago or more may read as a later id: one in the
-- future is none (pg_xact_status refuses it), and only one falling on an id under way could be
-- mistaken. Node-local by nature: on Citus each node counts its own transaction ids, so it is
-- asked where the row is — the append-only triggers fire on the shard, beside their state's
-- erasure records, which they read by a plain statement naming the tenant, which Citus runs on
-- the shard whole (in a subquery that it plans apart, Citus 13.2 loses a system column: "invalid
-- attnum -2").
CREATE OR REPLACE FUNCTION sms.written_by_this_transaction(p_xmin xid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_current bigint := pg_current_xact_id()::text::bigint;
    v_after   bigint := ((p_xmin::text::bigint - v_current) % 4294967296 + 4294967296) % 4294967296;
BEGIN
    IF v_after = 0 THEN
        RETURN true;  -- the transaction's own id
    ELSIF v_after >= 2147483648 OR p_xmin::text::bigint < 3 THEN
        RETURN false;  -- an earlier id, or none (0 invalid, 1 bootstrap, 2 frozen)
    END IF;
    BEGIN  -- a later id: a subtransaction's, or another transaction's that committed since
        RETURN coalesce(pg_xact_status((v_current + v_after)::text::xid8) = 'in progress', false);
    EXCEPTION WHEN invalid_parameter_value THEN  -- "in the future"
        RETURN false;
    END;
END;
$$;

-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql. The one way through is an erasure (DESIGN §14): a DELETE of a state's rows in a
-- transaction that has recorded that erasure in sms.erasures (sms.erase_state, sms.compact) — of
-- any of its rows for a purge, of its log and history up to the compaction point for a
-- compaction. The service's role holds no DELETE on these tables and no privilege on
-- sms.erasures; anyone else (the owner in psql) must record the erasure in the same transaction
-- first, so nothing leaves a log unrecorded. An older record, or another transaction's, opens
-- nothing: the record must be this transaction's own row (its xmin), on the node where the
-- trigger fires — on Citus the tenant's node, in the transaction there of a delegated call, or of
-- a coordinator's transaction (the owner's record and DELETE from psql meet there too). Each
-- trigger passes its table's name: on Citus the trigger fires on a shard, whose own name
-- (deltas_102234) is not the table's.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_table   text := TG_ARGV[0];
    v_through bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT e.through_version INTO v_through FROM sms.erasures e
         WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id
           AND (e.action = 'purge' OR v_table IN ('deltas', 'entry_history'))
           AND sms.written_by_this_transaction(e.xmin)
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

-- ===== sql/027_erasures_append_only.sql
-- sms.refuse_erasure_change(): sms.erasures is append-only — UPDATE, DELETE and TRUNCATE are
-- refused for everyone, a purge of the state it records included — except that the transaction
-- that wrote a record fills in its counts (`removed`) once the rows are gone: the record is that
-- transaction's own row (sms.written_by_this_transaction, on the node of the record's shard).
CREATE OR REPLACE FUNCTION sms.refuse_erasure_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'removed' = to_jsonb(OLD) - 'removed' THEN
        PERFORM FROM sms.erasures e
          WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id AND e.erasure_id = OLD.erasure_id
            AND sms.written_by_this_transaction(e.xmin);
        IF FOUND THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.erasures is append-only: %s is not allowed', TG_OP);
END;
$$;

-- ===== sql/131_erase_state.sql
-- sms.check_tenant_here(tenant): raises feature_not_supported unless this node holds the tenant's
-- rows — always so on one server; on Citus when the tenant's shards are placed on this node. An
-- erasure takes the state's lock and fence, advisory locks, which meet the state's writers only on
-- that node: a purge that a coordinator ran statement by statement would take them where no writer
-- does, pass a write in flight and leave its rows behind (seen on a cluster: the state then refused
-- its next delta). sms.erase_state and sms.compact call it first. The argument is not named
-- p_tenant_id, which `sms migrate --citus` would distribute the function by: a bare call would then
-- answer on the tenant's node instead of this one.
CREATE OR REPLACE FUNCTION sms.check_tenant_here(p_tenant text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- each statement is planned when it first runs: the Citus catalogs are read only where they are
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'sms.states'::regclass)
       OR EXISTS (SELECT FROM pg_catalog.pg_dist_placement p
                   WHERE p.shardid = pg_catalog.get_shard_id_for_distribution_column('sms.states', p_tenant)
                     AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = format('the rows of tenant %s are on another node: erase them there, by a bare call that '
                         'Citus delegates (SELECT sms.purge_state(…), sms.compact(…), sms.expire_state(…)), '
                         'not statement by statement from here', p_tenant);
END;
$$;

-- sms.erase_state(tenant, fsa, actor, key_id): the purge itself, for sms.purge_state and
-- sms.expire_states, which check who may ask; the service's role may not call it. Under the
-- state's lock (no delta interleaves) and its fence (sms.state_fence: no comment, alias, policy,
-- cached summary or TTL being written is passed) it records the erasure in sms.erasures, then
-- deletes the state's rows from every table of schema sms that has tenant_id and fsa_id columns —
-- found in the catalog, so a table added later is erased too — but sms.erasures; the append-only
-- logs let these deletes through because of that record (sms.refuse_log_change). It then fills in
-- the record's counts and tells the state's subscribers on sms_changes (unless sms.notify is
-- 'off'): {"tenant_id", "fsa_id", "purged": true, "version"}. The state then reads as never
-- written. Returns the record. It runs only on the tenant's node (sms.check_tenant_here).
CREATE OR REPLACE FUNCTION sms.erase_state(p_tenant_id text, p_fsa_id text, p_actor text, p_key_id text)
RETURNS sms.erasures
LANGUAGE plpgsql AS $$
DECLARE
    v_erasure sms.erasures;
    v_table   text;
    v_count   bigint;
    v_removed jsonb := '{}';
BEGIN
    PERFORM sms.check_tenant_here(p_tenant_id);
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

-- ===== sql/132_purge_state.sql
-- sms.purge_state(tenant, fsa, actor, key_id): erases a state — its entries, log, history,
-- snapshots, comments, summary cache, aliases, policies, refusals: every row of it in every table
-- (sms.erase_state) — when a person asks (DESIGN §14), and records who did it and when in
-- sms.erasures, which keeps that record. The state then reads as never written (version 0); its
-- feed subscribers are told. `actor` and `key_id` say who asked (the service passes the request's
-- actor and API key). The service may purge only states of the tenants its transaction acts for
-- (sms.caller_tenants; SM010 for any other, as for anything not there). Returns the record.
CREATE OR REPLACE FUNCTION sms.purge_state(p_tenant_id text, p_fsa_id text, p_actor text, p_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('key_id', p_key_id);
    IF v_allowed IS NOT NULL AND NOT p_tenant_id = ANY (v_allowed) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no state %s/%s', p_tenant_id, p_fsa_id);
    END IF;
    RETURN to_jsonb(sms.erase_state(p_tenant_id, p_fsa_id, p_actor, p_key_id));
END;
$$;
REVOKE ALL ON FUNCTION sms.purge_state(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.purge_state(text, text, text, text) TO sms_api;

-- ===== sql/133_expire_state.sql
-- sms.expire_state(tenant, fsa): purges the state (sms.erase_state, actor 'ttl') if it has gone
-- `expires_after` without a delta, checked under its lock, so that a delta that came meanwhile
-- keeps it. Returns the erasure's record, or NULL when the state is not (or no longer) past its
-- TTL. One state of one tenant, so that Citus runs a bare call of it on the tenant's node: the
-- service's sweeper makes one for each state sms.expired_states lists, each its own transaction.
CREATE OR REPLACE FUNCTION sms.expire_state(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    IF NOT EXISTS (SELECT FROM sms.states s
                    WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id
                      AND s.updated_at + s.expires_after <= now()) THEN
        RETURN NULL;
    END IF;
    RETURN to_jsonb(sms.erase_state(p_tenant_id, p_fsa_id, 'ttl', NULL));
END;
$$;
REVOKE ALL ON FUNCTION sms.expire_state(text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expire_state(text, text) TO sms_api;

-- ===== sql/133_expire_states.sql
-- sms.expire_states(limit): one sweep of the TTLs in one transaction, for SQL users on one server
-- (cron): expires (sms.expire_state) up to `limit` of the states sms.expired_states lists, and
-- returns their erasure records. On Citus it runs on the coordinator, not on the tenants' nodes,
-- and so refuses to erase (sms.check_tenant_here): there each state is expired by a bare call of
-- sms.expire_state, as the service's sweeper does.
CREATE OR REPLACE FUNCTION sms.expire_states(p_limit integer) RETURNS SETOF sms.erasures
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_state   record;
    v_erasure jsonb;
BEGIN
    FOR v_state IN SELECT * FROM sms.expired_states(p_limit) LOOP
        v_erasure := sms.expire_state(v_state.tenant_id, v_state.fsa_id);
        CONTINUE WHEN v_erasure IS NULL;
        RETURN NEXT jsonb_populate_record(NULL::sms.erasures, v_erasure);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION sms.expire_states(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expire_states(integer) TO sms_api;

-- ===== sql/133_expired_states.sql
-- sms.expired_states(limit): up to `limit` states, of every tenant, that have gone `expires_after`
-- without a delta, in id order: what a sweep of the TTLs expires, each by sms.expire_state. It only
-- reads (on Citus, every node's shards from the coordinator); the service's role, which sees no
-- tenant's rows when it acts for none, lists them through it.
CREATE OR REPLACE FUNCTION sms.expired_states(p_limit integer) RETURNS TABLE (tenant_id text, fsa_id text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'a sweep expires 1 to 10000 states';
    END IF;
    RETURN QUERY
        SELECT s.tenant_id, s.fsa_id FROM sms.states s
         WHERE s.expires_after IS NOT NULL AND s.updated_at + s.expires_after <= now()
         ORDER BY s.tenant_id, s.fsa_id
         LIMIT p_limit;
END;
$$;
REVOKE ALL ON FUNCTION sms.expired_states(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expired_states(integer) TO sms_api;

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
-- states of the tenants it acts for (sms.caller_tenants). Runs only on the tenant's node
-- (sms.check_tenant_here), where the state's writers take its lock. Returns the record.
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
    PERFORM sms.check_tenant_here(p_tenant_id);
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
    RETURN to_jsonb(v_erasure);
END;
$$;
REVOKE ALL ON FUNCTION sms.compact(text, text, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.compact(text, text, bigint, text, text) TO sms_api;
