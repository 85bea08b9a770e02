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
    IF NOT (sms.id_ok('tenant_id', coalesce(p_tenant_id, '')) AND sms.id_ok('fsa_id', coalesce(p_fsa_id, ''))
            AND sms.id_ok('actor', p_actor) AND sms.id_ok('lineage_id', p_lineage_id)
            AND sms.id_ok('trace_id', p_trace_id) AND sms.id_ok('parent_id', p_parent_id)) THEN
        -- an expression for ids that pass (all, nearly always); sms.check_id raises for the first bad one
        PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
                sms.check_id('actor', p_actor), sms.check_id('lineage_id', p_lineage_id),
                sms.check_id('trace_id', p_trace_id), sms.check_id('parent_id', p_parent_id);
    END IF;
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        PERFORM sms.raise_invalid('meta', 'meta must be a JSON object');
    END IF;

    -- no rule for the state or its tenant (most states): one probe, and no search
    IF EXISTS (SELECT FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id IN (p_fsa_id, '')) THEN
        v_targets := sms.policy_targets(p_tenant_id, p_fsa_id, p_ops, sms.aml_level(p_meta));
    END IF;
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
