-- sms.api_keys: the API keys (DESIGN §10). A key is shown once, when it is made; only the SHA-256
-- of the whole key is kept. A key names the tenants it may touch (a state of any other tenant is a
-- 404 to it), its scopes (read < write < admin), optionally the actor its deltas are written as,
-- the highest AML level it may claim, its rate limit and its expiry. Revoked keys stay, for the
-- record. Keys are not tenant data (one key may name several tenants): the service's role reads
-- them only through the functions sms.authenticate, sms.list_keys, sms.create_key and
-- sms.revoke_key. Once any key exists, every request needs one.
CREATE TABLE sms.api_keys (
    key_id      text        NOT NULL,           -- the key's public id, e.g. k_5Tq9…
    secret_hash bytea       NOT NULL,           -- sha256 of the whole key
    tenants     text[]      NOT NULL,
    scopes      text[]      NOT NULL,           -- read, write, admin (each implies the ones before)
    actor       text,                           -- deltas made with the key are written as this actor
    aml_level   integer,                        -- the highest AML level a request may claim
    rate_limit  double precision,               -- requests per second (NULL: the service's default)
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    PRIMARY KEY (key_id),
    UNIQUE (secret_hash)
);
