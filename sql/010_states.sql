-- sms.states: one small header row per (tenant_id, fsa_id).
-- apply_delta locks this row to serialise the writers of one state; `version` is the number of
-- deltas applied (gap-free), the counters describe sms.entries without scanning it
-- (content_bytes: the size of the entries' JSON text). `expires_after`: the state's TTL, purged by
-- sms.expire_states once it has gone that long without a delta (updated_at); NULL: never.
CREATE TABLE sms.states (
    tenant_id     text        NOT NULL,
    fsa_id        text        NOT NULL,
    version       bigint      NOT NULL DEFAULT 0,
    entry_count   bigint      NOT NULL DEFAULT 0,
    content_bytes bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    expires_after interval,
    PRIMARY KEY (tenant_id, fsa_id)
);
