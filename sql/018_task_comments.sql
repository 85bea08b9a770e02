-- sms.task_comments: comments on tasks (markdown bodies, blockers), append-only like the log.
-- comment_id increases with each comment on the state's tasks (sms.states.comments).
CREATE TABLE sms.task_comments (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,
    task_id    text        NOT NULL,
    comment_id bigint      NOT NULL,
    author     text        NOT NULL,
    body       text        NOT NULL,
    is_blocker boolean     NOT NULL DEFAULT false,
    lineage_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, task_id, comment_id)
);
