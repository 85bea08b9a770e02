-- Index for slices in order of recent change: a collection's member history, newest first and by
-- key within a version, exactly the order such a slice returns; walked by sms.recent_entries. The
-- history is append-only, so this costs one index entry per change.
CREATE INDEX entry_history_recent
    ON sms.entry_history (tenant_id, fsa_id, collection, version DESC, lower(member), member)
 WHERE is_member;
