-- Frozen copy of what revision 0016 installs (the sql/ files as they were), run as one script.

-- ===== states.expires_after (sql/010_states.sql)
ALTER TABLE sms.states ADD COLUMN expires_after interval;

-- ===== sql/010_states_expiring.sql
-- Index for the TTL sweep (sms.expire_states): the states that have a TTL, by their last delta.
CREATE INDEX states_expiring ON sms.states (updated_at) WHERE expires_after IS NOT NULL;

-- ===== sql/014_deltas_append_only.sql
-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql. The one way through is an erasure (DESIGN §14): a DELETE of a state's rows in a
-- transaction that has recorded that erasure in sms.erasures (sms.erase_state, sms.compact) — of
-- any of its rows for a purge, of its log and history up to the compaction point for a
-- compaction. The service's role holds no DELETE on these tables and no privilege on
-- sms.erasures; anyone else (the owner in psql) must record the erasure in the same transaction
-- first, so nothing leaves a log unrecorded. An older record opens nothing: a record names the
-- transaction that wrote it (pg_current_xact_id()).
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_through bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT e.through_version INTO v_through FROM sms.erasures e
         WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id AND e.tx_id = pg_current_xact_id()
           AND (e.action = 'purge' OR TG_TABLE_NAME IN ('deltas', 'entry_history'))
         ORDER BY e.through_version DESC NULLS FIRST
         LIMIT 1;
        IF FOUND AND (v_through IS NULL OR (to_jsonb(OLD) ->> 'version')::bigint <= v_through) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.%s is append-only: %s is not allowed', TG_TABLE_NAME, TG_OP);
END;
$$;

-- ===== sql/026_erasures.sql
-- sms.erasures: the record of every erasure of state data (DESIGN §14): each purge of a state
-- (sms.purge_state, and sms.expire_states for states whose TTL ran out, actor 'ttl') and each
-- compaction of its log (sms.compact): who asked (the actor, the API key, the database role),
-- when, the state's version then, up to which version a compaction dropped the log and history,
-- and how many rows each table lost. It outlives the state it records and is append-only
-- (sms.refuse_erasure_change). It is also the key the append-only logs check: a row leaves
-- sms.deltas, sms.entry_history, sms.task_comments, sms.policy_changes or sms.refusals only in a
-- transaction that has recorded the erasure of its state here (tx_id; sms.refuse_log_change), so
-- no erasure goes unrecorded, the owner's included.
CREATE TABLE sms.erasures (
    tenant_id       text        NOT NULL,
    fsa_id          text        NOT NULL,
    erasure_id      uuid        NOT NULL DEFAULT gen_random_uuid(),
    action          text        NOT NULL CHECK (action IN ('purge', 'compact')),
    actor           text,                              -- who asked ('ttl': the state's TTL ran out)
    key_id          text,                              -- the API key of the request (NULL from SQL)
    db_user         text        NOT NULL DEFAULT session_user,
    erased_at       timestamptz NOT NULL DEFAULT now(),
    last_version    bigint      NOT NULL,              -- the state's version when it was erased
    through_version bigint,                            -- compact: log and history up to here dropped
    removed         jsonb       NOT NULL DEFAULT '{}', -- rows removed, by table: {"deltas": 12, ...}
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (tenant_id, fsa_id, erasure_id)
);

-- ===== sql/027_erasures_append_only.sql
-- sms.refuse_erasure_change(): sms.erasures is append-only — UPDATE, DELETE and TRUNCATE are
-- refused for everyone, a purge of the state it records included — except that the transaction
-- that wrote a record fills in its counts (`removed`) once the rows are gone.
CREATE OR REPLACE FUNCTION sms.refuse_erasure_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.tx_id = pg_current_xact_id()
       AND to_jsonb(NEW) - 'removed' = to_jsonb(OLD) - 'removed' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.erasures is append-only: %s is not allowed', TG_OP);
END;
$$;

CREATE TRIGGER erasures_append_only
    BEFORE UPDATE OR DELETE ON sms.erasures
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_erasure_change();

CREATE TRIGGER erasures_no_truncate
    BEFORE TRUNCATE ON sms.erasures
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();

-- ===== sql/054_log_start.sql
-- sms.log_start(tenant, fsa): the version the state's kept log starts after: 0 while the log is
-- whole, the compaction point after sms.compact (the deltas up to it are gone, and the snapshot
-- taken there holds the state at it). Time travel and replay reach back to it and no further.
-- One probe of the log's primary key.
CREATE OR REPLACE FUNCTION sms.log_start(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN coalesce((SELECT min(version) - 1 FROM sms.deltas WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id),
                    sms.current_version(p_tenant_id, p_fsa_id));
END;
$$;

-- ===== sql/055_state_fence.sql
-- sms.state_fence(tenant, fsa, exclusive): the transaction-level advisory lock that keeps a purge
-- from missing a row of its state. Whatever writes a state's rows outside the delta path (which
-- sms.state_lock serialises already) — comments, aliases, policies, cached summaries, its TTL —
-- takes it shared first, and a purge takes it exclusively (sms.erase_state): such a write either
-- commits before the purge reads what to delete, or starts after the purge and sees the state
-- gone. Shared holders never wait for one another, nor for the state's delta writers.
CREATE OR REPLACE FUNCTION sms.state_fence(p_tenant_id text, p_fsa_id text, p_exclusive boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key bigint := hashtextextended(p_tenant_id, 41) # hashtextextended(p_fsa_id, 43);
BEGIN
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(v_key);
    ELSE
        PERFORM pg_advisory_xact_lock_shared(v_key);
    END IF;
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
           summary_chars = EXCLUDED.summary_chars, created_at = now(), last_used_at = now()
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
        ON CONFLICT (tenant_id, fsa_id, alias) DO UPDATE SET collection = EXCLUDED.collection, created_at = now();
        IF (SELECT count(*) FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id) > 100 THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a state has at most 100 aliases of its own';
        END IF;
    END IF;
    RETURN sms.aliases_of(p_tenant_id, p_fsa_id);
END;
$$;

-- ===== sql/096_set_policy.sql
-- sms.set_policy(tenant, fsa, rules, actor): replaces the rule set of a state — or, with fsa NULL,
-- the tenant's defaults — by `rules`, a JSON array of rules (each checked by sms.check_rule; []
-- removes them all), records the change in sms.policy_changes and returns the rules now set.
-- Changes of one rule set are serialised, and a state's take its fence (sms.state_fence), so that
-- a purge under way is never passed. At most 10,000 rules per set.
CREATE OR REPLACE FUNCTION sms.set_policy(p_tenant_id text, p_fsa_id text, p_rules jsonb,
                                          p_actor text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_fsa   text := coalesce(p_fsa_id, '');
    v_rules jsonb;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('actor', p_actor);
    IF p_fsa_id IS NOT NULL THEN
        PERFORM sms.check_id('fsa_id', p_fsa_id);
    END IF;
    IF jsonb_typeof(p_rules) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'rules are a JSON array of rule objects';
    END IF;
    IF jsonb_array_length(p_rules) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM006',
            MESSAGE = format('%s rules; at most 10000 are allowed per state or tenant', jsonb_array_length(p_rules));
    END IF;
    SELECT coalesce(jsonb_agg(sms.check_rule(r) ORDER BY n), '[]') INTO v_rules
      FROM jsonb_array_elements(p_rules) WITH ORDINALITY x(r, n);
    IF p_fsa_id IS NOT NULL THEN
        PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant_id, 29) # hashtextextended(v_fsa, 31));
    DELETE FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id = v_fsa;
    INSERT INTO sms.policies (tenant_id, fsa_id, rule_no, path, keys, anchor, rule)
    SELECT p_tenant_id, v_fsa, n, r ->> 'path', k, sms.policy_anchor(k), r
      FROM jsonb_array_elements(v_rules) WITH ORDINALITY x(r, n),
           LATERAL sms.parse_path(r ->> 'path') k;
    INSERT INTO sms.policy_changes (tenant_id, fsa_id, actor, rules) VALUES (p_tenant_id, v_fsa, p_actor, v_rules);
    RETURN v_rules;
END;
$$;

-- ===== sql/102_check_since.sql
-- sms.check_since(tenant, fsa, since): raises SM015 (history compacted) when a reader of the log
-- asks for the deltas after a version that a compaction dropped (0 < since < sms.log_start), as
-- it would miss some without knowing; true otherwise (so that a statement's WHERE can require it).
-- Reading after 0 reads the whole kept log, which after a compaction starts after its snapshot
-- (sms.document_at at sms.log_start is the state there).
CREATE OR REPLACE FUNCTION sms.check_since(p_tenant_id text, p_fsa_id text, p_since bigint) RETURNS boolean
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_start bigint;
BEGIN
    IF p_since > 0 THEN
        v_start := sms.log_start(p_tenant_id, p_fsa_id);
        IF p_since < v_start THEN
            RAISE EXCEPTION USING ERRCODE = 'SM015',
                MESSAGE = format('the deltas after version %s were compacted away: the log of this state starts '
                                 'after version %s', p_since, v_start),
                DETAIL = jsonb_build_object('history_from', v_start)::text;
        END IF;
    END IF;
    RETURN true;
END;
$$;

-- ===== sql/102_check_version.sql
-- sms.check_version(tenant, fsa, version): raises SM010 (not found) unless the state's history
-- holds that version: 0 up to the current version, and not before a baseline snapshot (history
-- is kept from the version a state had when history keeping was installed); SM015 (history
-- compacted) for a version before the point its log was compacted at (sms.log_start).
CREATE OR REPLACE FUNCTION sms.check_version(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_current  bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    v_baseline bigint := (SELECT max(version) FROM sms.snapshots
                           WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND baseline);
    v_start    bigint;  -- where the kept log starts: looked up only for a version before the current one
BEGIN
    IF p_version IS NULL OR p_version < 0 OR p_version > v_current THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('version %s does not exist: the state is at version %s', p_version, v_current),
            DETAIL = jsonb_build_object('current_version', v_current)::text;
    END IF;
    IF p_version < v_current THEN
        v_start := sms.log_start(p_tenant_id, p_fsa_id);
    END IF;
    IF p_version < v_start THEN
        RAISE EXCEPTION USING ERRCODE = 'SM015',
            MESSAGE = format('version %s was compacted away: the history of this state starts at version %s',
                             p_version, v_start),
            DETAIL = jsonb_build_object('current_version', v_current, 'history_from', v_start)::text;
    END IF;
    IF p_version < v_baseline THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('version %s is older than the kept history, which starts at version %s',
                             p_version, v_baseline),
            DETAIL = jsonb_build_object('current_version', v_current, 'history_from', v_baseline)::text;
    END IF;
END;
$$;

-- ===== sql/110_add_comment.sql
-- sms.add_comment(tenant, fsa, task_id, author, body, is_blocker, lineage_id): appends a comment
-- to an existing task (tasks.<task_id>); SM010 (not found) and nothing stored when there is no
-- such task. Bodies are markdown, 1 to 65536 characters. Returns the stored comment. Takes the
-- state's fence (sms.state_fence), so that a purge under way is never passed.
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
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
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
    RETURN to_jsonb(sms.erase_state(p_tenant_id, p_fsa_id, p_actor, p_key_id)) - 'tx_id';
END;
$$;
REVOKE ALL ON FUNCTION sms.purge_state(text, text, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.purge_state(text, text, text, text) TO sms_api;

-- ===== sql/133_expire_states.sql
-- sms.expire_states(limit): one sweep of the TTLs: purges (sms.erase_state, actor 'ttl') up to
-- `limit` states that have gone `expires_after` without a delta, and returns their erasure
-- records. Each is checked again under its lock, so a delta that came meanwhile keeps its state.
-- The service sweeps every SMS_EXPIRY_SWEEP_SECONDS; SQL users may call it too. States are taken
-- in id order, so that concurrent sweeps lock them in the same order.
CREATE OR REPLACE FUNCTION sms.expire_states(p_limit integer) RETURNS SETOF sms.erasures
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_state record;
BEGIN
    IF p_limit IS NULL OR p_limit NOT BETWEEN 1 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value', MESSAGE = 'a sweep expires 1 to 10000 states';
    END IF;
    FOR v_state IN
        SELECT s.tenant_id, s.fsa_id FROM sms.states s
         WHERE s.expires_after IS NOT NULL AND s.updated_at + s.expires_after <= now()
         ORDER BY s.tenant_id, s.fsa_id
         LIMIT p_limit
    LOOP
        PERFORM sms.state_lock(v_state.tenant_id, v_state.fsa_id);
        CONTINUE WHEN NOT EXISTS (SELECT FROM sms.states s
                                   WHERE s.tenant_id = v_state.tenant_id AND s.fsa_id = v_state.fsa_id
                                     AND s.updated_at + s.expires_after <= now());
        RETURN NEXT sms.erase_state(v_state.tenant_id, v_state.fsa_id, 'ttl', NULL);
    END LOOP;
END;
$$;
REVOKE ALL ON FUNCTION sms.expire_states(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.expire_states(integer) TO sms_api;

-- ===== sql/134_expiry_of.sql
-- sms.expiry_of(tenant, fsa): a state's TTL as {"tenant_id", "fsa_id", "expires_after_seconds",
-- "last_write_at", "expires_at"}: how long it may go without a delta before the sweep purges it
-- (sms.expire_states), when its last delta came, and so when it expires (nulls: no TTL, or no
-- delta yet).
CREATE OR REPLACE FUNCTION sms.expiry_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_state sms.states;
BEGIN
    SELECT * INTO v_state FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    RETURN jsonb_build_object(
        'tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
        'expires_after_seconds', round(extract(epoch FROM v_state.expires_after))::bigint,
        'last_write_at', CASE WHEN v_state.version > 0 THEN v_state.updated_at END,
        'expires_at', v_state.updated_at + v_state.expires_after);
END;
$$;

-- ===== sql/135_set_expiry.sql
-- sms.set_expiry(tenant, fsa, expires_after): sets the state's TTL — the sweep purges it once it
-- has gone that long without a delta (sms.expire_states) — or, with NULL, clears it; from 1
-- second to 999999 weeks (22023 otherwise). A state never written gets its header row, so that it
-- expires too if nobody writes it. Setting a TTL is no delta: it does not count as activity.
-- Takes the state's fence (sms.state_fence), so that a purge under way is never passed.
-- Returns sms.expiry_of.
CREATE OR REPLACE FUNCTION sms.set_expiry(p_tenant_id text, p_fsa_id text, p_expires_after interval)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    IF p_expires_after IS NULL THEN
        UPDATE sms.states SET expires_after = NULL WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    ELSIF p_expires_after < interval '1 second' OR p_expires_after > interval '999999 weeks' THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'expires_after is from 1 second to 999999 weeks';
    ELSE
        INSERT INTO sms.states AS s (tenant_id, fsa_id, expires_after)
        VALUES (p_tenant_id, p_fsa_id, p_expires_after)
        ON CONFLICT (tenant_id, fsa_id) DO UPDATE SET expires_after = EXCLUDED.expires_after;
    END IF;
    RETURN sms.expiry_of(p_tenant_id, p_fsa_id);
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

-- ===== sms.erasures row-level security (sql/180_tenant_isolation.sql)
-- the erasure records: written only by the owner's functions (sms.erase_state, sms.compact)
ALTER TABLE sms.erasures ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.erasures USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT ON sms.erasures TO sms_api;
