-- sms.normalize_expect(expect): the $expect map {"path": value | {"$exists": bool}} as a list of
-- preconditions [{"path": [keys], "value": v} | {"path": [keys], "exists": bool}].
CREATE OR REPLACE FUNCTION sms.normalize_expect(p_expect jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_value jsonb;
    v_out   jsonb := '[]';
BEGIN
    IF jsonb_typeof(p_expect) <> 'object' THEN
        PERFORM sms.raise_invalid('$expect', '$expect takes an object of {"path": expected value}');
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_expect) LOOP
        IF jsonb_typeof(v_value) = 'object' AND EXISTS (SELECT FROM jsonb_object_keys(v_value) k WHERE left(k, 1) = '$') THEN
            IF (SELECT array_agg(k) FROM jsonb_object_keys(v_value) k) <> ARRAY['$exists']
               OR jsonb_typeof(v_value -> '$exists') <> 'boolean' THEN
                PERFORM sms.raise_invalid(v_key, format('$expect at "%s" takes a value or {"$exists": true|false}', v_key));
            END IF;
            v_out := v_out || jsonb_build_object('path', to_jsonb(sms.parse_path(v_key)), 'exists', v_value -> '$exists');
        ELSE
            v_out := v_out || jsonb_build_object('path', to_jsonb(sms.parse_path(v_key)), 'value', v_value);
        END IF;
    END LOOP;
    RETURN v_out;
END;
$$;
