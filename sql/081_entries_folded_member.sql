-- Index for slices: member keys folded to lower case (globs match case-insensitively), in byte
-- order (entries.member is COLLATE "C"), so a glob's literal prefix is a range scan within one
-- collection. It holds no column that a merge changes (value, version), so entry updates stay
-- HOT (heap-only) and write no index entries.
CREATE INDEX entries_folded_member ON sms.entries (tenant_id, fsa_id, collection, lower(member)) WHERE is_member;
