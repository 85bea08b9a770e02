-- sms.erasures: the record of every erasure of state data (DESIGN §14): each purge of a state
-- (sms.purge_state, and sms.expire_states for states whose TTL ran out, actor 'ttl') and each
-- compaction of its log (sms.compact): who asked (the actor, the API key, the database role),
-- when, the state's version then, up to which version a compaction dropped the log and history,
-- and how many rows each table lost. It outlives the state it records and is append-only
-- (sms.refuse_erasure_change). It is also the key the append-only logs check: a row leaves
-- sms.deltas, sms.entry_history, sms.task_comments, sms.policy_changes or sms.refusals only in a
-- transaction that has recorded the erasure of its state here (the record is that transaction's own
-- row: sms.refuse_log_change), so no erasure goes unrecorded, the owner's included.
CREATE TABLE sms.erasures (
    tenant_id       text        NOT NULL,
    fsa_id          text        NOT NULL,
    erasure_id      uuid        NOT NULL DEFAULT gen_random_uuid(),
    action          text        NOT NULL CHECK (action IN ('purge', 'compact')),
    actor           text,                              -- who asked ('ttl': the state's TTL ran out)
    key_id          text,                              -- the API key of the request (NULL from SQL)
    db_user         text        NOT NULL DEFAULT session_user,
    erased_at       timestamptz NOT NULL DEFAULT now(),
    last_version    bigint      NOT NULL,              -- the state's version when it was erased
    through_version bigint,                            -- compact: log and history up to here dropped
    removed         jsonb       NOT NULL DEFAULT '{}', -- rows removed, by table: {"deltas": 12, ...}
    PRIMARY KEY (tenant_id, fsa_id, erasure_id)
);
