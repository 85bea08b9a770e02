-- sms.policy_changes and sms.refusals are records for reports: append-only, like the delta log.
CREATE TRIGGER policy_changes_append_only
    BEFORE UPDATE OR DELETE ON sms.policy_changes
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('policy_changes');

CREATE TRIGGER policy_changes_no_truncate
    BEFORE TRUNCATE ON sms.policy_changes
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('policy_changes');

CREATE TRIGGER refusals_append_only
    BEFORE UPDATE OR DELETE ON sms.refusals
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change('refusals');

CREATE TRIGGER refusals_no_truncate
    BEFORE TRUNCATE ON sms.refusals
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change('refusals');
