-- sms.nest(keys, value): {"k1": {"k2": ... value}}; the value itself for no keys.
CREATE OR REPLACE FUNCTION sms.nest(p_keys text[], p_value jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    FOR i IN REVERSE coalesce(cardinality(p_keys), 0) .. 1 LOOP
        p_value := jsonb_build_object(p_keys[i], p_value);
    END LOOP;
    RETURN p_value;
END;
$$;
