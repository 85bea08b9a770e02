-- sms.key_family(member): the family of a member key: its folded form (lower case, as slices match
-- keys) up to and including its first character that is not a letter or digit, or NULL when it
-- has none (DESIGN_001 -> design_, latency_ms_p50 -> latency_, SKU-7 -> sku-). A family is exactly
-- the set of members that the glob `family*` matches, so sms.member_counts can count it for such a
-- glob (`task:DESIGN_*`) without reading its members.
CREATE OR REPLACE FUNCTION sms.key_family(p_member text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT substring(lower(p_member COLLATE "C") FROM '^[a-z0-9]*[^a-z0-9]');
$$;
