-- sms.entry_history: every value an entry has held, one row per entry per version that changed
-- it (value NULL: the entry was removed). Together with sms.snapshots it answers "the state at
-- version v" and "from what to what" without replaying operators. Written by sms.put_entry and
-- sms.write_op; append-only.
CREATE TABLE sms.entry_history (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    collection text COLLATE "C" NOT NULL,
    is_member  boolean          NOT NULL,
    member     text COLLATE "C" NOT NULL,
    version    bigint           NOT NULL,
    value      jsonb,
    PRIMARY KEY (tenant_id, fsa_id, collection, is_member, member, version)
);
CREATE INDEX entry_history_by_version ON sms.entry_history (tenant_id, fsa_id, version);
