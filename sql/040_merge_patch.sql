-- sms.merge_patch(target, patch): RFC 7396 JSON Merge Patch. Objects merge key by key, null
-- removes a key, anything else replaces. NULL target means "absent". Cost ∝ the patch's size.
CREATE OR REPLACE FUNCTION sms.merge_patch(p_target jsonb, p_patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_value jsonb;
BEGIN
    IF jsonb_typeof(p_patch) <> 'object' THEN
        RETURN p_patch;
    END IF;
    IF p_target IS NULL OR jsonb_typeof(p_target) <> 'object' THEN
        p_target := '{}';
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_patch) LOOP
        IF v_value = 'null' THEN
            p_target := p_target - v_key;
        ELSE
            p_target := p_target || jsonb_build_object(v_key, sms.merge_patch(p_target -> v_key, v_value));
        END IF;
    END LOOP;
    RETURN p_target;
END;
$$;
