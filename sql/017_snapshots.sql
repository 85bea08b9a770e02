-- sms.snapshots / sms.snapshot_entries: the materialised state every sms.snapshot_every()
-- versions (a copy of its entries), so that reading an old version overlays at most that many
-- versions of sms.entry_history on a snapshot instead of reading the whole history. A baseline
-- snapshot marks where history starts for a state that existed before history was kept.
CREATE TABLE sms.snapshots (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,
    version    bigint      NOT NULL,
    taken_at   timestamptz NOT NULL DEFAULT now(),
    baseline   boolean     NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, fsa_id, version)
);
CREATE TABLE sms.snapshot_entries (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    version    bigint           NOT NULL,
    collection text COLLATE "C" NOT NULL,
    is_member  boolean          NOT NULL,
    member     text COLLATE "C" NOT NULL,
    value      jsonb            NOT NULL,
    PRIMARY KEY (tenant_id, fsa_id, version, collection, is_member, member)
);
