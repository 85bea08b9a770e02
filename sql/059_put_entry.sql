-- sms.put_entry(...): stores one entry's new value given its old one (NULL = absent): insert,
-- update, delete, or nothing when the value did not change; a change is recorded in
-- sms.entry_history, and a member's change in its collection's sms.member_counts. Returns the
-- change in entry count and content bytes (the size of the values' JSON text).
CREATE OR REPLACE FUNCTION sms.put_entry(p_tenant_id text, p_fsa_id text, p_collection text,
                                         p_is_member boolean, p_member text, p_old jsonb, p_new jsonb,
                                         p_version bigint, OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_was    text := sms.entry_status(p_old);
    v_is     text := sms.entry_status(p_new);
    v_family text;
BEGIN
    entry_delta := 0;
    byte_delta := coalesce(octet_length(p_new::text), 0) - coalesce(octet_length(p_old::text), 0);
    IF p_new IS NOT DISTINCT FROM p_old THEN
        byte_delta := 0;
    ELSIF p_old IS NULL THEN
        INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_new, p_version);
        entry_delta := 1;
    ELSIF p_new IS NULL THEN
        DELETE FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND is_member = p_is_member AND member = p_member;
        entry_delta := -1;
    ELSE
        UPDATE sms.entries SET value = p_new, version = p_version
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND is_member = p_is_member AND member = p_member;
    END IF;
    IF p_new IS DISTINCT FROM p_old AND p_is_member THEN
        -- the collection's marker row carries the version of its latest change (sms.slice_coarse)
        UPDATE sms.entries SET version = p_version
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND NOT is_member AND member = '' AND version < p_version;
        -- the counts of the member's key family, and of the whole collection when they change
        -- (the marker row above already has the collection's latest change): an INSERT … VALUES
        -- per row, which Citus can route with these variables (an INSERT … SELECT it cannot)
        FOREACH v_family IN ARRAY ARRAY[CASE WHEN entry_delta <> 0 OR v_was IS DISTINCT FROM v_is THEN '' END,
                                        sms.key_family(p_member)] LOOP
            CONTINUE WHEN v_family IS NULL;
            INSERT INTO sms.member_counts AS c (tenant_id, fsa_id, collection, family, members, statuses, version)
            VALUES (p_tenant_id, p_fsa_id, p_collection, v_family, entry_delta,
                    sms.tally(sms.tally('{}', v_was, -1), v_is, 1), p_version)
            ON CONFLICT (tenant_id, fsa_id, collection, family) DO UPDATE
               SET members = c.members + EXCLUDED.members,
                   statuses = sms.tally(sms.tally(c.statuses, v_was, -1), v_is, 1),
                   version = EXCLUDED.version;
        END LOOP;
    END IF;
    IF p_new IS DISTINCT FROM p_old THEN
        INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_version, p_new)
        ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = EXCLUDED.value;
    END IF;
END;
$$;
