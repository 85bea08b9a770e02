-- sms.check_literal(path, value): a plain value may not hold keys starting with $ at any depth,
-- because a nested {"$inc": 1} would be stored literally where an operator was meant. Storing such
-- keys is explicit: {"$set": ...}.
CREATE OR REPLACE FUNCTION sms.check_literal(p_path text, p_value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF jsonb_typeof(p_value) IN ('object', 'array')
       AND jsonb_path_exists(p_value, 'strict $.** ? (@.type() == "object").keyvalue() ? (@.key starts with "$")') THEN
        PERFORM sms.raise_invalid(p_path, format(
            'the value at "%s" holds keys starting with $ (operators work only at the top of a '
            'path''s value); use {"$set": ...} to store such keys literally', p_path));
    END IF;
END;
$$;
