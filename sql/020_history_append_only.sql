-- entry_history and task_comments are append-only too (sms.refuse_log_change); an entry_history
-- row may only be rewritten by the delta that wrote it (sms.refuse_history_rewrite).
CREATE TRIGGER entry_history_append_only
    BEFORE UPDATE ON sms.entry_history
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_history_rewrite();

CREATE TRIGGER entry_history_no_delete
    BEFORE DELETE ON sms.entry_history
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('entry_history');

CREATE TRIGGER entry_history_no_truncate
    BEFORE TRUNCATE ON sms.entry_history
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('entry_history');

CREATE TRIGGER task_comments_append_only
    BEFORE UPDATE OR DELETE ON sms.task_comments
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('task_comments');

CREATE TRIGGER task_comments_no_truncate
    BEFORE TRUNCATE ON sms.task_comments
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('task_comments');
