-- sms.take_snapshot(tenant, fsa, version): saves the state's current entries as the snapshot at
-- `version` (the caller holds the state's lock, so the entries are exactly that version's).
CREATE OR REPLACE FUNCTION sms.take_snapshot(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_version)
    ON CONFLICT DO NOTHING;
    INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
    SELECT tenant_id, fsa_id, p_version, collection, is_member, member, value
      FROM sms.entries WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
    ON CONFLICT DO NOTHING;
END;
$$;
