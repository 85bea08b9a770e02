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
    v_at      bigint;
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
    -- the batch's first version: its writes do not publish (the batch does, once) and move a
    -- collection's marker row once for all of them (sms.write_op); and the state's version, which
    -- each write that succeeds moves on (sms.append_delta reads it rather than the state's row)
    v_at := sms.current_version(p_tenant_id, p_fsa_id);
    PERFORM set_config('sms.batch', (v_at + 1)::text, true), set_config('sms.batch_at', v_at::text, true);

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

    PERFORM set_config('sms.batch', coalesce(v_batch, ''), true), set_config('sms.batch_at', '', true);
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
