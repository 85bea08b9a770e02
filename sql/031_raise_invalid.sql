-- sms.raise_invalid(path, message): raises SM001 (invalid delta) with the path in DETAIL; usable
-- inside expressions (it never returns).
CREATE OR REPLACE FUNCTION sms.raise_invalid(p_path text, p_message text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'SM001', MESSAGE = p_message,
        DETAIL = jsonb_build_object('path', p_path)::text;
END;
$$;
