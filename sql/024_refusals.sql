-- sms.refusals: every delta a policy refused (sms.apply_ops), with who sent it, in which lineage,
-- at which AML level, what it would have done and the rules it broke. A refused delta is never in
-- the delta log and uses no version; this is where reports find it. Append-only.
CREATE TABLE sms.refusals (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,
    refusal_id uuid        NOT NULL DEFAULT gen_random_uuid(),
    refused_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    version    bigint      NOT NULL,   -- the state's version when it was refused
    delta_id   uuid,
    actor      text,
    lineage_id text,
    trace_id   text,
    aml_level  integer,
    meta       jsonb       NOT NULL,
    ops        jsonb       NOT NULL,
    violations jsonb       NOT NULL,   -- [{"path", "rule", "value", "limit", "message"}, ...]
    PRIMARY KEY (tenant_id, fsa_id, refusal_id)
);
CREATE INDEX refusals_by_time ON sms.refusals (tenant_id, refused_at);
