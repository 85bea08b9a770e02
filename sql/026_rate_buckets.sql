-- sms.rate_buckets: one token bucket per API key, shared by every process of the service
-- (sms.take_tokens). UNLOGGED: a bucket is worth nothing after a crash, and refilling it must not
-- cost WAL.
CREATE UNLOGGED TABLE sms.rate_buckets (
    key_id     text             NOT NULL,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (key_id)
);
