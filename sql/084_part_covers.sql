-- sms.part_covers(part, collection, is_member, member): whether an entry is one of the members a
-- parsed slice part covers (before any `where`), its key folded and compared in byte order as
-- sms.parse_slice made the part. An expression that reads no table, so that it is inlined where
-- it is called: a scan of sms.entries that names it keeps the range conditions on lower(member)
-- that entries_folded_member serves, in the caller's own statement, which can order and cut that
-- scan (the key order of sms.first_entries stops after k).
CREATE OR REPLACE FUNCTION sms.part_covers(p_part jsonb, p_collection text, p_is_member boolean, p_member text)
RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT p_collection = p_part ->> 'collection' AND p_is_member
       AND lower(p_member COLLATE "C") >= p_part ->> 'lo' AND lower(p_member COLLATE "C") < p_part ->> 'hi'
       AND lower(p_member COLLATE "C") LIKE p_part ->> 'pattern'
       AND (p_part ->> 'member' IS NULL OR p_member = p_part ->> 'member');
$$;
