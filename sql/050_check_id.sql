-- sms.check_id(name, value): identifiers (tenant, fsa, actor, lineage, trace ids, …) are 1 to 128
-- bytes of text without control characters, and without invisible or direction-changing ones
-- (zero-width spaces and joiners, soft hyphens, bidirectional marks and overrides, the byte-order
-- mark), which would make two ids look alike. Ids that are segments of URL paths (tenant_id,
-- fsa_id, task_id, lineage_id, agent) may not hold "/" (agents may: their route takes the rest of
-- the path), nor be "." or "..", which URL normalisation would remove. NULL passes (optional ids).
-- Raises SM007. sms.id_ok says the same without raising.
CREATE OR REPLACE FUNCTION sms.id_ok(p_name text, p_value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- one expression, which the planner inlines into its callers' (no call on the write path)
    SELECT p_value IS NULL OR NOT (
        p_value = '' OR octet_length(p_value) > 128
        OR p_value ~ '[[:cntrl:]\u0080-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]'
        OR (p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id', 'agent') AND p_value IN ('.', '..'))
        OR (p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id') AND strpos(p_value, '/') > 0));
$$;

CREATE OR REPLACE FUNCTION sms.check_id(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_segment boolean := p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id', 'agent');
BEGIN
    IF NOT sms.id_ok(p_name, p_value) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM007',
            MESSAGE = format('%s must be 1 to 128 bytes without control, invisible or bidirectional characters%s',
                             p_name, CASE WHEN p_name = 'agent' THEN ', and not . or ..'
                                          WHEN v_segment THEN ', without "/", and not . or ..' ELSE '' END),
            DETAIL = jsonb_build_object('field', p_name)::text;
    END IF;
END;
$$;
