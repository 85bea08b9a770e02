-- sms.refuse_erasure_change(): sms.erasures is append-only — UPDATE, DELETE and TRUNCATE are
-- refused for everyone, a purge of the state it records included — except that the transaction
-- that wrote a record fills in its counts (`removed`) once the rows are gone: the record is that
-- transaction's own row (sms.written_by_this_transaction, on the node of the record's shard).
CREATE OR REPLACE FUNCTION sms.refuse_erasure_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND to_jsonb(NEW) - 'removed' = to_jsonb(OLD) - 'removed' THEN
        PERFORM FROM sms.erasures e
          WHERE e.tenant_id = OLD.tenant_id AND e.fsa_id = OLD.fsa_id AND e.erasure_id = OLD.erasure_id
            AND sms.written_by_this_transaction(e.xmin);
        IF FOUND THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.erasures is append-only: %s is not allowed', TG_OP);
END;
$$;

CREATE TRIGGER erasures_append_only
    BEFORE UPDATE OR DELETE ON sms.erasures
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_erasure_change();

CREATE TRIGGER erasures_no_truncate
    BEFORE TRUNCATE ON sms.erasures
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('erasures');
