-- sms.written_by_this_transaction(xmin): whether a row that the caller sees, and whose xmin (a
-- system column) it read on this node, was written by the current transaction or one of its
-- subtransactions (a savepoint: a driver's nested transaction, psql's ON_ERROR_ROLLBACK). The row
-- is seen, so it is committed or the transaction's own: its own when its writer's id is this
-- transaction's, or a later one still under way (pg_xact_status knows a subtransaction's, released
-- or not). The 32-bit xmin is widened against the transaction's 64-bit id; a frozen row keeps its
-- raw xmin, so a row frozen 2^31 transactions ago or more may read as a later id: one in the
-- future is none (pg_xact_status refuses it), and only one falling on an id under way could be
-- mistaken. Node-local by nature: on Citus each node counts its own transaction ids, so it is
-- asked where the row is — the append-only triggers fire on the shard, beside their state's
-- erasure records, which they read by a plain statement naming the tenant, which Citus runs on
-- the shard whole (in a subquery that it plans apart, Citus 13.2 loses a system column: "invalid
-- attnum -2").
CREATE OR REPLACE FUNCTION sms.written_by_this_transaction(p_xmin xid) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    v_current bigint := pg_current_xact_id()::text::bigint;
    v_after   bigint := ((p_xmin::text::bigint - v_current) % 4294967296 + 4294967296) % 4294967296;
BEGIN
    IF v_after = 0 THEN
        RETURN true;  -- the transaction's own id
    ELSIF v_after >= 2147483648 OR p_xmin::text::bigint < 3 THEN
        RETURN false;  -- an earlier id, or none (0 invalid, 1 bootstrap, 2 frozen)
    END IF;
    BEGIN  -- a later id: a subtransaction's, or another transaction's that committed since
        RETURN coalesce(pg_xact_status((v_current + v_after)::text::xid8) = 'in progress', false);
    EXCEPTION WHEN invalid_parameter_value THEN  -- "in the future"
        RETURN false;
    END;
END;
$$;

-- sms.refuse_log_change(): the logs are append-only. UPDATE, DELETE and TRUNCATE of sms.deltas,
-- sms.entry_history and sms.task_comments are refused for everyone, also for SQL run directly
-- from psql. The one way through is an erasure (DESIGN §14): a DELETE of a state's rows in a
-- transaction that has recorded that erasure in sms.erasures (sms.erase_state, sms.compact) — of
-- any of its rows for a purge, of its log and history up to the compaction point for a
-- compaction. The service's role holds no DELETE on these tables and no privilege on
-- sms.erasures; anyone else (the owner in psql) must record the erasure in the same transaction
-- first, so nothing leaves a log unrecorded. An older record, or another transaction's, opens
-- nothing: the record must be this transaction's own row (its xmin), on the node where the
-- trigger fires — on Citus the tenant's node, in the transaction there of a delegated call, or of
-- a coordinator's transaction (the owner's record and DELETE from psql meet there too). Each
-- trigger passes its table's name: on Citus the trigger fires on a shard, whose own name
-- (deltas_102234) is not the table's.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v_table   text := TG_ARGV[0];
    v_through bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT e.through_version INTO v_through FROM sms.erasures e
         WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id
           AND (e.action = 'purge' OR v_table IN ('deltas', 'entry_history'))
           AND sms.written_by_this_transaction(e.xmin)
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
