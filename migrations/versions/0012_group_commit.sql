-- Frozen copy of what revision 0012 installs (the sql/ files as they were), run as one script.

-- ===== sql/055_lock_state.sql
-- sms.state_lock(tenant, fsa): the transaction-level advisory lock that serialises the writers of
-- one state, and nothing else: sms.apply_deltas takes it for a whole batch, so that a delta of the
-- batch that fails (its subtransaction rolled back, and the locks it took with it) never lets
-- another writer in between.
CREATE OR REPLACE FUNCTION sms.state_lock(p_tenant_id text, p_fsa_id text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_tenant_id, 0) # hashtextextended(p_fsa_id, 7331));
$$;

-- sms.lock_state(tenant, fsa): serialises the writers of one state and returns its version,
-- creating its header row on first use. The advisory lock comes first, before the transaction
-- writes anything, so writers of a state also get their transaction ids in version order: the
-- tenant-wide feed (sms.feed_after) reads in transaction-id order and so keeps each state's
-- versions in order. (Call apply_delta as the first write of a transaction for that to hold.)
CREATE OR REPLACE FUNCTION sms.lock_state(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    INSERT INTO sms.states (tenant_id, fsa_id) VALUES (p_tenant_id, p_fsa_id) ON CONFLICT DO NOTHING;
    SELECT version INTO v_version FROM sms.states
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id FOR UPDATE;
    RETURN v_version;
END;
$$;

-- ===== sql/069_apply_ops.sql
-- sms.record_refusal(...): records in sms.refusals a delta a policy refused (the SM011 that
-- sms.append_delta raised: its message and detail) and returns the refusal as sms.apply_ops answers
-- it. For sms.apply_ops, and for sms.apply_deltas when a refusal rolls back a whole batch.
CREATE OR REPLACE FUNCTION sms.record_refusal(
    p_tenant_id  text,
    p_fsa_id     text,
    p_ops        jsonb,
    p_actor      text,
    p_lineage_id text,
    p_delta_id   uuid,
    p_meta       jsonb,
    p_trace_id   text,
    p_message    text,
    p_detail     jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal sms.refusals;
BEGIN
    INSERT INTO sms.refusals (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, aml_level, meta, ops,
                              violations)
    VALUES (p_tenant_id, p_fsa_id, (p_detail ->> 'current_version')::bigint, p_delta_id, p_actor, p_lineage_id,
            p_trace_id, sms.aml_level(p_meta), coalesce(p_meta, '{}'), p_ops, p_detail -> 'violations')
    RETURNING * INTO v_refusal;
    RETURN jsonb_build_object('success', false, 'refused', true, 'error', 'policy-violation', 'message', p_message,
                              'violations', v_refusal.violations, 'version', v_refusal.version,
                              'refusal_id', v_refusal.refusal_id);
END;
$$;

-- sms.apply_ops(...): applies normalised ops and preconditions (see sms.normalize_delta) to the
-- state (tenant_id, fsa_id); the engine behind sms.apply_delta, sms.replace_state, sms.rollback and
-- sms.heartbeat, and what a replay of the log calls with each logged row's ops. Ops are trusted to
-- be normalised (as in sms.deltas.ops); use sms.apply_delta for anything else. Returns
-- {"success": true, "version", "delta_id", "changed": [paths], "duplicate"}, with every guarantee
-- of sms.append_delta (atomic, serial per state, gap-free versions, idempotent, one NOTIFY).
-- Policies (DESIGN §10): the rules that concern the ops' paths (sms.policy_targets, at the AML
-- level in meta.aml_level) are checked on the values the delta produces, in the same transaction.
-- A delta that breaks one is undone (a savepoint, taken only when some rule concerns it), uses no
-- version, is not logged and notifies nobody; it is recorded in sms.refusals, and the answer is
-- {"success": false, "refused": true, "error": "policy-violation", "message", "violations",
-- "version", "refusal_id"} — returned, not raised, so that the record of the refusal commits.
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
    v_targets jsonb;
    v_message text;
    v_detail  jsonb;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('lineage_id', p_lineage_id),
            sms.check_id('trace_id', p_trace_id), sms.check_id('parent_id', p_parent_id);
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        PERFORM sms.raise_invalid('meta', 'meta must be a JSON object');
    END IF;

    v_targets := sms.policy_targets(p_tenant_id, p_fsa_id, p_ops, sms.aml_level(p_meta));
    IF v_targets IS NULL THEN
        RETURN sms.append_delta(p_tenant_id, p_fsa_id, p_ops, p_expect, p_actor, p_lineage_id, p_delta_id,
                                p_expected_version, p_meta, p_trace_id, p_parent_id);
    END IF;
    BEGIN
        RETURN sms.append_delta(p_tenant_id, p_fsa_id, p_ops, p_expect, p_actor, p_lineage_id, p_delta_id,
                                p_expected_version, p_meta, p_trace_id, p_parent_id, v_targets);
    EXCEPTION WHEN SQLSTATE 'SM011' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
    END;
    RETURN sms.record_refusal(p_tenant_id, p_fsa_id, p_ops, p_actor, p_lineage_id, p_delta_id, p_meta, p_trace_id,
                              v_message, v_detail);
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
-- (a timeout, a shutdown) fail the call. One NOTIFY on sms_changes for the batch, carrying the
-- range of versions it made: {"tenant_id", "fsa_id", "version" (the last), "from_version",
-- "deltas" (how many)}, unless sms.notify is 'off'.
CREATE OR REPLACE FUNCTION sms.apply_deltas(
    p_tenant_id text,
    p_fsa_id    text,
    p_writes    jsonb,
    p_atomic    boolean DEFAULT false
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_notify  text := current_setting('sms.notify', true);
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
    PERFORM set_config('sms.notify', 'off', true);  -- each write's own NOTIFY: this one sends one for all

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

    PERFORM set_config('sms.notify', coalesce(v_notify, ''), true);
    IF coalesce(v_notify, '') <> 'off' THEN
        PERFORM sms.notify_versions(p_tenant_id, p_fsa_id,
                                    (SELECT array_agg((r ->> 'version')::bigint) FROM unnest(v_results) r
                                      WHERE (r ->> 'success')::boolean AND NOT (r ->> 'duplicate')::boolean));
    END IF;
    RETURN to_jsonb(v_results);
END;
$$;

-- sms.notify_versions(tenant, fsa, versions): the one NOTIFY of a batch that made these versions
-- (none: no NOTIFY): ids and the range of versions, never anything a row of the log would have to
-- be read for (subscribers read the log).
CREATE OR REPLACE FUNCTION sms.notify_versions(p_tenant_id text, p_fsa_id text, p_versions bigint[]) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('sms_changes', jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
                                                       'version', max(v), 'from_version', min(v),
                                                       'deltas', count(*))::text)
      FROM unnest(p_versions) v
    HAVING count(*) > 0;
$$;
