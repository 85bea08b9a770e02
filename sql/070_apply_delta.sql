-- sms.apply_delta(...): applies one delta in its wire format (DESIGN §4) to the state
-- (tenant_id, fsa_id) in one call: it is validated and normalised (sms.normalize_delta; SM001
-- when malformed, nothing applied) and then applied by sms.apply_ops, with all of its guarantees
-- (atomic, serial per state with gap-free versions, idempotent by delta_id, expected version and
-- $expect checked under the lock, one NOTIFY). Returns {"success": true, "version", "delta_id",
-- "changed": [paths], "duplicate"}.
CREATE OR REPLACE FUNCTION sms.apply_delta(
    p_tenant_id        text,
    p_fsa_id           text,
    p_delta            jsonb,
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
    v_delta jsonb := sms.normalize_delta(p_delta);
BEGIN
    RETURN sms.apply_ops(p_tenant_id, p_fsa_id, v_delta -> 'ops', v_delta -> 'expect', p_actor, p_lineage_id,
                         p_delta_id, p_expected_version, p_meta, p_trace_id, p_parent_id);
END;
$$;
