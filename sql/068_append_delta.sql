-- sms.append_delta(...): the engine behind sms.apply_ops: under the state's lock it checks the
-- idempotency key, the expected version and the preconditions, writes the ops, appends the log row,
-- takes a snapshot when one is due and notifies. With policy targets (sms.policy_targets) it reads
-- the guarded values before and after writing and raises SM011 when the delta breaks a rule, so
-- that sms.apply_ops can undo it and record the refusal. Call sms.apply_ops, never this.
-- Guarantees (for sms.apply_ops):
--   * atomic: the entries, the log row, its place in the tenant's feed and the NOTIFY commit
--     together or not at all;
--   * serial per state: sms.lock_state serialises writers (sms.apply_deltas holds the lock for a
--     whole batch), versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and the preconditions are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * a type mismatch (SM002) applies nothing;
--   * published (sms.publish): a place in the tenant's feed and exactly one NOTIFY on channel
--     sms_changes with ids only (< 1 KB, unless the setting sms.notify is 'off') — or, inside
--     sms.apply_deltas (the setting sms.batch_at), one for the whole batch at its end;
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
    v_written     record;
    v_keys        text[];
    v_batch_at    bigint := nullif(current_setting('sms.batch_at', true), '')::bigint;
    v_setting     text;  -- what set_config answers
BEGIN
    -- in a batch, whose caller holds the state's lock, the version its last write made (the setting
    -- sms.batch_at, which a write that fails takes back with its subtransaction); else the lock. A
    -- state's first version makes its header row (sms.lock_state), in a batch too.
    v_version := CASE WHEN v_batch_at > 0 THEN v_batch_at ELSE sms.lock_state(p_tenant_id, p_fsa_id) END;

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
    FOR v_op, v_keys IN SELECT value, ARRAY(SELECT jsonb_array_elements_text(value -> 'path'))
                          FROM jsonb_array_elements(v_ops) LOOP
        v_written := sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op, v_keys);  -- an expression, not a query
        v_entries := v_entries + v_written.entry_delta;
        v_bytes := v_bytes + v_written.byte_delta;
        v_paths := v_paths || v_written.op_path;
        v_collections := v_collections || v_written.op_collection;
    END LOOP;
    IF cardinality(v_collections) > 1 THEN  -- the log keeps them sorted, each once
        v_collections := ARRAY(SELECT DISTINCT c FROM unnest(v_collections) c ORDER BY c);
    END IF;
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

    IF v_batch_at IS NOT NULL THEN  -- a batch publishes once, at its end
        v_setting := set_config('sms.batch_at', v_version::text, true);  -- an expression, not a query
    ELSE
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
