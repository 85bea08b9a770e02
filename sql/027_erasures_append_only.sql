-- sms.refuse_erasure_change(): sms.erasures is append-only — UPDATE, DELETE and TRUNCATE are
-- refused for everyone, a purge of the state it records included — except that the transaction
-- that wrote a record fills in its counts (`removed`) once the rows are gone.
CREATE OR REPLACE FUNCTION sms.refuse_erasure_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.tx_id = pg_current_xact_id()
       AND to_jsonb(NEW) - 'removed' = to_jsonb(OLD) - 'removed' THEN
        RETURN NEW;
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
