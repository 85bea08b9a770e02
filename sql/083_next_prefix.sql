-- sms.next_prefix(prefix): the smallest string above every string that starts with `prefix` in
-- byte order (the exclusive upper bound of a prefix range scan); for '' the largest character.
CREATE OR REPLACE FUNCTION sms.next_prefix(p_prefix text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_prefix = '' OR ascii(right(p_prefix, 1)) >= 1114111 THEN p_prefix || chr(1114111)
        ELSE left(p_prefix, -1) || chr(ascii(right(p_prefix, 1)) + 1
                                       + CASE WHEN ascii(right(p_prefix, 1)) = 55295 THEN 2048 ELSE 0 END)
    END;
$$;
