-- sms.refuse_history_rewrite(): sms.entry_history is append-only, except that the delta being
-- applied may rewrite its own rows (two ops of one delta on one entry leave the entry's final
-- value): a row whose version is above the state's committed version, with the same key.
CREATE OR REPLACE FUNCTION sms.refuse_history_rewrite() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.tenant_id, NEW.fsa_id, NEW.collection, NEW.is_member, NEW.member, NEW.version)
       = (OLD.tenant_id, OLD.fsa_id, OLD.collection, OLD.is_member, OLD.member, OLD.version)
       AND OLD.version > coalesce((SELECT version FROM sms.states
                                    WHERE tenant_id = OLD.tenant_id AND fsa_id = OLD.fsa_id), 0) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'SM008', MESSAGE = 'sms.entry_history is append-only: UPDATE is not allowed';
END;
$$;
