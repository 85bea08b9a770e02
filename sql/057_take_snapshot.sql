-- sms.take_snapshot(tenant, fsa, version): saves the state's current entries as the snapshot at
-- `version` (the caller holds the state's lock, so the entries are exactly that version's).
CREATE OR REPLACE FUNCTION sms.take_snapshot(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_entry record;
BEGIN
    INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_version)
    ON CONFLICT DO NOTHING;
    -- row by row, not INSERT ... SELECT: Citus runs a write delegated to the tenant's node only when
    -- each of its statements names the tenant, which a copy between two tables does not
    FOR v_entry IN SELECT e.collection, e.is_member, e.member, e.value
                     FROM sms.entries e WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id LOOP
        INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
        VALUES (p_tenant_id, p_fsa_id, p_version, v_entry.collection, v_entry.is_member, v_entry.member, v_entry.value)
        ON CONFLICT DO NOTHING;
    END LOOP;
END;
$$;
