-- Index for slices: member keys folded to lower case (globs match case-insensitively), then as
-- they are, in byte order (entries.member is COLLATE "C"): a glob's literal prefix is a range scan
-- within one collection, and that scan already yields the slices' key order, so reading the first
-- k stops after k. It holds no column that a merge changes (value, version), so entry updates
-- stay HOT (heap-only) and write no index entries.
CREATE INDEX entries_folded_member ON sms.entries (tenant_id, fsa_id, collection, lower(member), member)
 WHERE is_member;
