-- Frozen copy of what revision 0023 installs (the sql/ files as they were), run as one script.

-- ===== sql/020_parse_path.sql
-- sms.parse_path(path): a dotted delta path into its keys. `\.` is a literal dot and `\\` a
-- literal backslash; every key must be non-empty. Raises SM001 (invalid delta) naming the path.
CREATE OR REPLACE FUNCTION sms.parse_path(p_path text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_keys text[];
BEGIN
    IF p_path !~ '^(?:[^.\\]|\\[.\\])+(?:\.(?:[^.\\]|\\[.\\])+)*$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SM001',
            MESSAGE = format('invalid path "%s": keys are separated by single dots, must not be '
                             'empty, and only \. and \\ may be escaped', p_path),
            DETAIL = jsonb_build_object('path', p_path)::text;
    END IF;
    IF strpos(p_path, '\') = 0 THEN  -- nothing escaped (nearly always): split at the dots
        v_keys := string_to_array(p_path, '.');
    ELSE
        SELECT array_agg(regexp_replace(m[1], '\\(.)', '\1', 'g') ORDER BY n)
          INTO v_keys
          FROM regexp_matches(p_path, '((?:[^.\\]|\\[.\\])+)', 'g') WITH ORDINALITY AS t(m, n);
    END IF;
    IF cardinality(v_keys) > 64 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SM006',
            MESSAGE = format('path "%s" is %s keys deep; at most 64 are allowed',
                             left(p_path, 200), cardinality(v_keys)),
            DETAIL = jsonb_build_object('path', left(p_path, 200))::text;
    END IF;
    RETURN v_keys;
END;
$$;

-- ===== sql/021_format_path.sql
-- sms.format_escaped_path(keys): sms.format_path, escaping every key's dots and backslashes.
CREATE OR REPLACE FUNCTION sms.format_escaped_path(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.' ORDER BY n)
      FROM unnest(p_keys) WITH ORDINALITY AS t(k, n);
$$;

-- sms.format_path(keys): the dotted path of a key array; the inverse of sms.parse_path. One
-- expression, which the planner inlines into the statement that calls it (a function with an
-- aggregate it cannot: each call cost a delta ~15 µs): keys with no dot or backslash to escape —
-- nearly all — are joined as they are, others escaped by sms.format_escaped_path.
CREATE OR REPLACE FUNCTION sms.format_path(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN array_to_string(p_keys, '') ~ '[.\\]' THEN sms.format_escaped_path(p_keys)
                WHEN cardinality(p_keys) > 0 THEN array_to_string(p_keys, '.') END;
$$;

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
-- creating its header row on first use.
CREATE OR REPLACE FUNCTION sms.lock_state(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    SELECT version INTO v_version FROM sms.states
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id FOR UPDATE;
    IF NOT FOUND THEN  -- its first write (an insert attempted on every write cost each ~10 µs)
        INSERT INTO sms.states (tenant_id, fsa_id) VALUES (p_tenant_id, p_fsa_id) ON CONFLICT DO NOTHING;
        SELECT version INTO v_version FROM sms.states
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id FOR UPDATE;
    END IF;
    RETURN v_version;
END;
$$;

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

    IF p_expect <> '[]' THEN  -- not a statement for nothing to check: most deltas
        SELECT jsonb_agg(sms.format_path(k)) INTO v_failed
          FROM jsonb_array_elements(p_expect) e,
               LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(e -> 'path'))) p(k),
               LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) cur
         WHERE CASE WHEN e ? 'exists' THEN (cur IS NOT NULL) <> (e ->> 'exists')::boolean
                    ELSE cur IS DISTINCT FROM e -> 'value' END;
    END IF;
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
