-- Frozen copy of what revision 0029 installs (the sql/ files as they were), run as one script.

-- ===== sql/018_task_comments_by_id.sql
-- A state's comments by id: sms.add_comment gives a comment the state's next id, one more than
-- the last (task_comments is append-only, so an id is never given twice).
CREATE INDEX task_comments_by_id ON sms.task_comments (tenant_id, fsa_id, comment_id);

-- ===== sql/110_add_comment.sql
-- sms.add_comment(tenant, fsa, task_id, author, body, is_blocker, lineage_id): appends a comment
-- to an existing task (tasks.<task_id>); SM010 (not found) and nothing stored when there is no
-- such task. Bodies are markdown, 1 to 65536 characters. Returns the stored comment, whose id is
-- the state's next: one more than its last comment's, under a lock of the state's comments alone —
-- not its header row, which every write of the state's deltas updates, so that a comment never
-- waits for a batch of them to commit, nor the next batch for the comment. Takes the state's fence
-- (sms.state_fence), so that a purge under way is never passed.
CREATE OR REPLACE FUNCTION sms.add_comment(p_tenant_id text, p_fsa_id text, p_task_id text, p_author text,
                                           p_body text, p_is_blocker boolean DEFAULT false,
                                           p_lineage_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_comment_id bigint;
    v_comment    sms.task_comments;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('task_id', coalesce(p_task_id, '')), sms.check_id('author', coalesce(p_author, '')),
            sms.check_id('lineage_id', p_lineage_id);
    IF p_body IS NULL OR length(p_body) NOT BETWEEN 1 AND 65536 THEN
        PERFORM sms.raise_invalid('body', 'a comment body is 1 to 65536 characters of markdown');
    END IF;
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    IF NOT EXISTS (SELECT FROM sms.entries WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
                                             AND collection = 'tasks' AND is_member AND member = p_task_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010',
            MESSAGE = format('task %s does not exist in %s/%s', p_task_id, p_tenant_id, p_fsa_id),
            DETAIL = jsonb_build_object('path', sms.format_path(ARRAY['tasks', p_task_id]))::text;
    END IF;
    -- the lock of the state's comments: a key of its own, neither sms.state_lock's nor the fence's
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant_id, 47) # hashtextextended(p_fsa_id, 53));
    SELECT coalesce(max(comment_id), 0) + 1 INTO v_comment_id FROM sms.task_comments
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    INSERT INTO sms.task_comments (tenant_id, fsa_id, task_id, comment_id, author, body, is_blocker, lineage_id)
    VALUES (p_tenant_id, p_fsa_id, p_task_id, v_comment_id, p_author, p_body, coalesce(p_is_blocker, false),
            p_lineage_id)
    RETURNING * INTO v_comment;
    RETURN to_jsonb(v_comment);
END;
$$;

-- ===== states.comments (sql/010_states.sql): comment ids are no longer counted there
ALTER TABLE sms.states DROP COLUMN comments;
