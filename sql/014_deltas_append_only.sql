-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.%s is append-only: %s is not allowed', TG_TABLE_NAME, TG_OP);
END;
$$;

CREATE TRIGGER deltas_append_only
    BEFORE UPDATE OR DELETE ON sms.deltas
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER deltas_no_truncate
    BEFORE TRUNCATE ON sms.deltas
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();
