-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql. The one way through is an erasure (DESIGN §14): a DELETE of a state's rows in a
-- transaction that has recorded that erasure in sms.erasures (sms.erase_state, sms.compact) — of
-- any of its rows for a purge, of its log and history up to the compaction point for a
-- compaction. The service's role holds no DELETE on these tables and no privilege on
-- sms.erasures; anyone else (the owner in psql) must record the erasure in the same transaction
-- first, so nothing leaves a log unrecorded. An older record opens nothing: a record names the
-- transaction that wrote it (pg_current_xact_id()). Each trigger passes its table's name: on
-- Citus the trigger fires on a shard, whose own name (deltas_102234) is not the table's.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_table   text := TG_ARGV[0];
    v_through bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT e.through_version INTO v_through FROM sms.erasures e
         WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id AND e.tx_id = pg_current_xact_id()
           AND (e.action = 'purge' OR v_table IN ('deltas', 'entry_history'))
         ORDER BY e.through_version DESC NULLS FIRST
         LIMIT 1;
        IF FOUND AND (v_through IS NULL OR (to_jsonb(OLD) ->> 'version')::bigint <= v_through) THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.%s is append-only: %s is not allowed', v_table, TG_OP);
END;
$$;

CREATE TRIGGER deltas_append_only
    BEFORE UPDATE OR DELETE ON sms.deltas
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('deltas');

CREATE TRIGGER deltas_no_truncate
    BEFORE TRUNCATE ON sms.deltas
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('deltas');
