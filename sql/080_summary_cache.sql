-- sms.summary_cache: the materialised slice + summary per (state, request). A row is served while
-- the fingerprint of what its slice covers (sms.slice_fingerprint) is unchanged, so writes to
-- other collections or other entries keep it valid; while even its collections are unchanged
-- (sms.slice_coarse, one lookup per collection) that is known without computing the fingerprint. At most sms.summary_cache_limit() rows per
-- state; the least recently used go first.
CREATE TABLE sms.summary_cache (
    tenant_id     text        NOT NULL,
    fsa_id        text        NOT NULL,
    cache_key     text        NOT NULL,   -- md5 of the request (spec, k, order, where, options)
    request       jsonb       NOT NULL,
    version       bigint      NOT NULL,   -- the state version the slice was read at
    fingerprint   text        NOT NULL,
    result        jsonb       NOT NULL,   -- slice, total, truncated, per-spec counts
    summary       text        NOT NULL,   -- the summary's body (its header is made per response)
    slice_bytes   integer     NOT NULL,
    summary_chars integer     NOT NULL,
    hits          bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    coarse        text        NOT NULL DEFAULT '',  -- sms.slice_coarse when last validated
    PRIMARY KEY (tenant_id, fsa_id, cache_key)
);
