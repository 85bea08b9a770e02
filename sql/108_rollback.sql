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
