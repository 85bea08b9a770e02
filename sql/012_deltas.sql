-- sms.deltas: the append-only log of every applied delta; replaying it from version 0 reproduces
-- the state exactly (the entries are its materialisation).
--   version      per state, gap-free: 1, 2, 3, ...
--   delta_id     idempotency key, unique per state
--   ops          the normalised delta: [{"path": [...], "op": "...", "value": ...}, ...]
--   paths        the dotted paths the delta addressed; collections: their top-level keys
--   meta         request metadata kept as sent (pillar, aml_level, ...)
CREATE TABLE sms.deltas (
    tenant_id   text        NOT NULL,
    fsa_id      text        NOT NULL,
    version     bigint      NOT NULL,
    delta_id    uuid        NOT NULL,
    actor       text,
    lineage_id  text,
    trace_id    text,
    parent_id   text,
    meta        jsonb       NOT NULL DEFAULT '{}',
    ops         jsonb       NOT NULL,
    paths       text[]      NOT NULL,
    collections text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, version),
    UNIQUE (tenant_id, fsa_id, delta_id)
);
