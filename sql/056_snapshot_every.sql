-- sms.snapshot_every(): how many versions apart snapshots are taken: the setting
-- sms.snapshot_every (SMS_SNAPSHOT_EVERY for the service), 1000 by default. A read of an old
-- version overlays at most this many versions of history on a snapshot.
CREATE OR REPLACE FUNCTION sms.snapshot_every() RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT greatest(1, coalesce(nullif(current_setting('sms.snapshot_every', true), '')::integer, 1000));
$$;
