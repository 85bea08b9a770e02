-- sms.deep_union(a, b): objects merged key by key, recursively; otherwise b. Unlike a merge
-- patch, JSON nulls are kept (slices of the union of several specs).
CREATE OR REPLACE FUNCTION sms.deep_union(p_a jsonb, p_b jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_value jsonb;
BEGIN
    IF p_a IS NULL OR p_b IS NULL OR jsonb_typeof(p_a) <> 'object' OR jsonb_typeof(p_b) <> 'object' THEN
        RETURN coalesce(p_b, p_a);
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_b) LOOP
        p_a := p_a || jsonb_build_object(v_key, sms.deep_union(p_a -> v_key, v_value));
    END LOOP;
    RETURN p_a;
END;
$$;
