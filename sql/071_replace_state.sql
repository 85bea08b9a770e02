-- sms.replace_state(...): replaces the whole state with p_document, logged as one delta that sets
-- each of its top-level keys and unsets every other one; its keys and values are checked as a
-- delta's are (sms.check_value). Same arguments, result and guarantees as sms.apply_delta. The
-- state is locked before its keys are read, so a concurrent writer can't slip a key past the
-- replacement.
CREATE OR REPLACE FUNCTION sms.replace_state(
    p_tenant_id        text,
    p_fsa_id           text,
    p_document         jsonb,
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
    v_ops jsonb;
BEGIN
    IF p_document IS NULL OR jsonb_typeof(p_document) <> 'object' THEN
        PERFORM sms.raise_invalid('', format('a state must be a JSON object, not %s',
                                             coalesce(jsonb_typeof(p_document), 'nothing')));
    END IF;
    IF EXISTS (SELECT FROM jsonb_object_keys(p_document) k WHERE left(k, 1) = '$') THEN
        PERFORM sms.raise_invalid('', 'top-level keys of a state may not start with $ (they are reserved in deltas)');
    END IF;
    PERFORM CASE WHEN length(key) > sms.limit_setting('max_key_length', 512)
                 THEN sms.raise_invalid(left(key, 100), format('a key is %s characters long; at most %s are allowed',
                                                               length(key), sms.limit_setting('max_key_length', 512)))
            END, sms.check_value(key, value)
       FROM jsonb_each(p_document);
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    PERFORM sms.lock_state(p_tenant_id, p_fsa_id);
    -- a retry: the ops logged the first time, which apply_ops answers as a duplicate
    SELECT ops INTO v_ops FROM sms.deltas
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND delta_id = p_delta_id;
    IF NOT FOUND THEN
        -- ops rather than a wire delta: any key, even "", is a valid top-level key here
        SELECT jsonb_agg(jsonb_build_object('path', jsonb_build_array(key), 'op', op, 'value', value) ORDER BY key)
          INTO v_ops FROM (
            SELECT key, 'set' AS op, value FROM jsonb_each(p_document)
            UNION ALL
            SELECT collection, 'unset', 'true'::jsonb FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND NOT is_member
               AND NOT p_document ? collection
        ) d;
    END IF;
    IF v_ops IS NULL THEN
        -- {} over an empty state changes nothing, so nothing is logged
        RETURN jsonb_build_object('success', true, 'delta_id', NULL, 'changed', '[]'::jsonb, 'duplicate', false,
            'version', (SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id));
    END IF;
    RETURN sms.apply_ops(p_tenant_id, p_fsa_id, v_ops, '[]', p_actor, p_lineage_id, p_delta_id,
                         p_expected_version, p_meta, p_trace_id, p_parent_id);
END;
$$;
