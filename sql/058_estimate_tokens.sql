-- sms.estimate_tokens(text): a conservative token count of the text, for budgets in SQL (the
-- changes digest): its UTF-8 bytes, less one per two letters of each run of ASCII letters and
-- one per space before printable ASCII other than a digit. The service counts the same way when
-- no tokenizer is configured; app/domain/tokens.py says why it does not under-count real tokenizers.
CREATE OR REPLACE FUNCTION sms.estimate_tokens(p_text text) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT octet_length(p_text)
           - coalesce((SELECT sum(length(run[1]) / 2) FROM regexp_matches(p_text, '[A-Za-z]+', 'g') run), 0)::integer
           - regexp_count(p_text, ' (?=[!-/:-~])');
$$;
