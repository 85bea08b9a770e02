-- sms.clip_tokens(text, max_tokens): the text, or its longest prefix that fits in max_tokens
-- estimated tokens (sms.estimate_tokens) with … after it; '' when not even … fits. Like
-- Tokenizer.clip in app/domain/tokens.py, by the same binary search.
CREATE OR REPLACE FUNCTION sms.clip_tokens(p_text text, p_max_tokens integer) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_fits    integer := 0;  -- left(p_text, v_fits) || '…' is within the budget
    v_longest integer := length(p_text) - 1;
    v_middle  integer;
BEGIN
    IF sms.estimate_tokens(p_text) <= p_max_tokens THEN
        RETURN p_text;
    END IF;
    IF sms.estimate_tokens('…') > p_max_tokens THEN
        RETURN '';
    END IF;
    WHILE v_fits < v_longest LOOP
        v_middle := (v_fits + v_longest + 1) / 2;
        IF sms.estimate_tokens(left(p_text, v_middle) || '…') <= p_max_tokens THEN
            v_fits := v_middle;
        ELSE
            v_longest := v_middle - 1;
        END IF;
    END LOOP;
    RETURN left(p_text, v_fits) || '…';
END;
$$;
