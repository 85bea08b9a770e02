-- sms.entries: a state's content, one row per entry, so that a merge rewrites only the entries it
-- touches and never the whole document.
--   * a top-level key whose value is not an object: one row (is_member = false) holding the value;
--   * a top-level object: a marker row (is_member = false, value '{}') so that {} round-trips,
--     plus one row per member (is_member = true, member = the member's key).
-- Keys use COLLATE "C" so that key-prefix globs are primary-key range scans.
-- `version` is the state version that last changed the entry; for a marker row, that last changed
-- any member of the collection.
CREATE TABLE sms.entries (
    tenant_id  text                NOT NULL,
    fsa_id     text                NOT NULL,
    collection text COLLATE "C"    NOT NULL,
    is_member  boolean             NOT NULL,
    member     text COLLATE "C"    NOT NULL DEFAULT '',
    value      jsonb               NOT NULL,
    version    bigint              NOT NULL,
    PRIMARY KEY (tenant_id, fsa_id, collection, is_member, member)
);
