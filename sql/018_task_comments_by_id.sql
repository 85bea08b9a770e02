-- A state's comments by id: sms.add_comment gives a comment the state's next id, one more than
-- the last (task_comments is append-only, so an id is never given twice).
CREATE INDEX task_comments_by_id ON sms.task_comments (tenant_id, fsa_id, comment_id);
