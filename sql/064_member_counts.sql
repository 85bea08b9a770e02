-- sms.member_counts: how many members a collection has, in all (family '') and per key family
-- (sms.key_family), with their counts by status (sms.entry_status) and the version of the latest
-- change to any of them. The merge keeps it (sms.put_entry, sms.count_members), so that a slice of
-- a whole collection or of a family (`task:*`, `task:DESIGN_*`) has its total, its status counts
-- and its cache fingerprint at the cost of one row, however many members it matches.
CREATE TABLE sms.member_counts (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    collection text COLLATE "C" NOT NULL,
    family     text COLLATE "C" NOT NULL,  -- '' = every member of the collection
    members    bigint           NOT NULL,
    statuses   jsonb            NOT NULL,  -- members per status: {"OPEN": 12, "DONE": 3}
    version    bigint           NOT NULL,  -- the latest state version that changed one of the members
                                           -- (family '': that changed the counts; the collection's
                                           -- marker row in sms.entries moves with any change)
    PRIMARY KEY (tenant_id, fsa_id, collection, family)
);
