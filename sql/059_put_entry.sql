-- sms.put_entry(...): stores one entry's new value given its old one (NULL = absent) and the old
-- one's version: insert, update, delete, or nothing when the value did not change; a change is
-- recorded in sms.entry_history, and a member's change in its collection's sms.member_counts.
-- Returns the change in entry count and content bytes (the size of the values' JSON text), and
-- whether the value changed.
-- The caller holds the state's lock: nobody else writes these rows meanwhile, so a row is updated
-- where it exists and inserted where not, without the cost of INSERT … ON CONFLICT (a speculative
-- insertion each time); an entry the same version wrote already (two ops of one delta on one
-- member) has its history row, which is rewritten.
CREATE OR REPLACE FUNCTION sms.put_entry(p_tenant_id text, p_fsa_id text, p_collection text,
                                         p_is_member boolean, p_member text, p_old jsonb, p_old_version bigint,
                                         p_new jsonb, p_version bigint, OUT entry_delta bigint, OUT byte_delta bigint,
                                         OUT changed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_was    text := sms.entry_status(p_old);
    v_is     text := sms.entry_status(p_new);
    v_family text;
BEGIN
    changed := p_new IS DISTINCT FROM p_old;
    entry_delta := 0;
    byte_delta := coalesce(octet_length(p_new::text), 0) - coalesce(octet_length(p_old::text), 0);
    IF NOT changed THEN
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
    IF changed AND p_is_member THEN
        -- the counts of the member's key family, and of the whole collection when they change
        -- (the collection's marker row moves with any change, sms.write_op): statements on one
        -- row each, which Citus can route with these variables (an INSERT … SELECT it cannot)
        FOREACH v_family IN ARRAY ARRAY[CASE WHEN entry_delta <> 0 OR v_was IS DISTINCT FROM v_is THEN '' END,
                                        sms.key_family(p_member)] LOOP
            CONTINUE WHEN v_family IS NULL;
            UPDATE sms.member_counts
               SET members = members + entry_delta, statuses = sms.tally(sms.tally(statuses, v_was, -1), v_is, 1),
                   version = p_version
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection AND family = v_family;
            IF NOT FOUND THEN
                INSERT INTO sms.member_counts (tenant_id, fsa_id, collection, family, members, statuses, version)
                VALUES (p_tenant_id, p_fsa_id, p_collection, v_family, entry_delta,
                        sms.tally(sms.tally('{}', v_was, -1), v_is, 1), p_version);
            END IF;
        END LOOP;
    END IF;
    IF changed AND p_old_version = p_version THEN
        UPDATE sms.entry_history SET value = p_new
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection
           AND is_member = p_is_member AND member = p_member AND version = p_version;
    ELSIF changed THEN
        INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_version, p_new);
    END IF;
END;
$$;
