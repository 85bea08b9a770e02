-- sms.take_tokens(key_id, rate, burst, wanted): takes up to `wanted` tokens from the key's bucket,
-- which refills at `rate` per second up to `burst`, and returns how many it got and, when none,
-- after how many seconds one is there. The buckets are shared by every process of the service,
-- which takes tokens a few at a time. Callers of one bucket are serialised by its row. Only keys
-- that exist get a bucket.
CREATE OR REPLACE FUNCTION sms.take_tokens(p_key_id text, p_rate double precision, p_burst double precision,
                                           p_wanted integer, OUT granted integer, OUT retry_after double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_bucket sms.rate_buckets;
    v_tokens double precision;
BEGIN
    INSERT INTO sms.rate_buckets (key_id, tokens, updated_at)
    SELECT p_key_id, p_burst, v_now WHERE EXISTS (SELECT FROM sms.api_keys WHERE key_id = p_key_id)
    ON CONFLICT (key_id) DO NOTHING;
    SELECT * INTO v_bucket FROM sms.rate_buckets WHERE key_id = p_key_id FOR UPDATE;
    IF NOT FOUND THEN
        granted := 0;
        RETURN;
    END IF;
    v_tokens := least(p_burst, v_bucket.tokens
                               + p_rate * greatest(0, extract(epoch FROM v_now - v_bucket.updated_at)));
    granted := least(p_wanted, floor(v_tokens))::integer;
    UPDATE sms.rate_buckets SET tokens = v_tokens - granted, updated_at = v_now WHERE key_id = p_key_id;
    IF granted = 0 THEN
        retry_after := (1 - v_tokens) / p_rate;
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION sms.take_tokens(text, double precision, double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.take_tokens(text, double precision, double precision, integer) TO sms_api;
