-- The tenant's change feed: the order in which a tenant's transactions committed their deltas,
-- carried by the tenant's own rows (DESIGN §7, §14), so that it holds on one server and on a
-- cluster sharded by tenant alike, and survives the tenant moving between nodes — where
-- transaction ids, sequences and snapshots are one node's and mean nothing on the next.
--   sms.feed         one row per transaction and state that applied deltas: the versions it made
--                    (from_version .. to_version) and its position in the tenant's feed
--   sms.feed_clocks  one row per tenant: the last position handed out
-- A transaction's row gets its position when it commits (sms.place_in_feed, a deferred trigger),
-- from the tenant's clock row, whose lock it then holds until the commit is done: the tenant's
-- next transaction gets the next position only once this one is visible. So positions become
-- visible in order, and a reader that has seen position n has seen every position before it
-- (sms.feed_after) — while a transaction that is slow, or held open, delays nobody until it
-- commits.
CREATE TABLE sms.feed (
    tenant_id    text   NOT NULL,
    fsa_id       text   NOT NULL,
    to_version   bigint NOT NULL,
    from_version bigint NOT NULL,
    position     bigint,
    PRIMARY KEY (tenant_id, fsa_id, to_version),
    UNIQUE (tenant_id, position)
);

CREATE TABLE sms.feed_clocks (
    tenant_id text   NOT NULL PRIMARY KEY,
    position  bigint NOT NULL
);
