-- Index for slices: member keys folded to lower case (globs match case-insensitively), in byte
-- order (entries.member is COLLATE "C"), so a glob's literal prefix is a range scan within one
-- collection; `version` is included so a cache fingerprint is an index-only scan.
CREATE INDEX entries_folded_member ON sms.entries (tenant_id, fsa_id, collection, lower(member))
    INCLUDE (version) WHERE is_member;
