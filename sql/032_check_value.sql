-- sms.check_value(path, value, literal): a value a delta may store at `path` (DESIGN §4; nothing a
-- client sends can break a state):
--   * nested at most sms.max_depth (32) levels, counting the delta itself as one and the value as
--     the second (an operator's operand counts as the value it stands for);
--   * keys at every depth at most sms.max_key_length (512) characters;
--   * numbers within sms.check_number's range;
--   * with `literal` (a plain value, not a $set operand), no key starting with $: a nested
--     {"$inc": 1} would be stored literally where an operator was meant.
-- Raises SM001 (invalid) naming the path, or 22003 (sms.check_number). Three walks of the value
-- (numbers, depth, keys), in the database, never in the service's event loop.
CREATE OR REPLACE FUNCTION sms.check_value(p_path text, p_value jsonb, p_literal boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_depth  integer;
    v_length integer;
    v_key    text;
BEGIN
    IF NOT sms.needs_check(p_value) THEN
        RETURN;  -- a string, boolean, null or number in range: nothing to walk
    END IF;
    PERFORM sms.check_number(p_path, p_value);
    IF jsonb_typeof(p_value) = 'number' THEN
        RETURN;
    END IF;
    v_depth := sms.limit_setting('max_depth', 32);
    v_length := sms.limit_setting('max_key_length', 512);
    IF jsonb_path_exists(p_value, format('strict $.**{%s to last} ? (@.type() == "object" || @.type() == "array")',
                                         v_depth - 1)::jsonpath) THEN
        PERFORM sms.raise_invalid(p_path, format('the value at "%s" is nested more than %s levels deep (the delta '
                                                 'counting as one)', p_path, v_depth));
    END IF;
    SELECT k.key INTO v_key
      FROM jsonb_path_query(p_value, 'strict $.** ? (@.type() == "object").keyvalue().key') j,
           LATERAL (SELECT j #>> '{}' AS key) k
     WHERE length(k.key) > v_length OR (p_literal AND left(k.key, 1) = '$')
     LIMIT 1;
    IF length(v_key) > v_length THEN
        PERFORM sms.raise_invalid(p_path, format('the value at "%s" holds a key of %s characters; at most %s are '
                                                 'allowed', p_path, length(v_key), v_length));
    ELSIF v_key IS NOT NULL THEN
        PERFORM sms.raise_invalid(p_path, format(
            'the value at "%s" holds keys starting with $ (operators work only at the top of a path''s value); use '
            '{"$set": ...} to store such keys literally', p_path));
    END IF;
END;
$$;
