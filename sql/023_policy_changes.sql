-- sms.policy_changes: every change of a rule set (sms.set_policy), who made it and the rules it
-- set; append-only.
CREATE TABLE sms.policy_changes (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,   -- '' = the tenant's defaults
    change_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text,
    rules      jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, fsa_id, change_id)
);
