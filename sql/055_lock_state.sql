-- sms.state_lock(tenant, fsa): the transaction-level advisory lock that serialises the writers of
-- one state, and nothing else: sms.apply_deltas takes it for a whole batch, so that a delta of the
-- batch that fails (its subtransaction rolled back, and the locks it took with it) never lets
-- another writer in between.
CREATE OR REPLACE FUNCTION sms.state_lock(p_tenant_id text, p_fsa_id text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_advisory_xact_lock(hashtextextended(p_tenant_id, 0) # hashtextextended(p_fsa_id, 7331));
$$;

-- sms.lock_state(tenant, fsa): serialises the writers of one state and returns its version,
-- creating its header row on first use. The advisory lock is the whole serialisation: every
-- version is made under it, so the version read after taking it is the latest. (A row lock on the
-- header as well cost each write of a batch a MultiXact — the row locked again by a subtransaction
-- of the transaction that had updated it — and a hot state used up MultiXact ids as fast as
-- versions.)
CREATE OR REPLACE FUNCTION sms.lock_state(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_version bigint;
BEGIN
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    SELECT version INTO v_version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    IF NOT FOUND THEN  -- its first write (an insert attempted on every write cost each ~10 µs)
        INSERT INTO sms.states (tenant_id, fsa_id) VALUES (p_tenant_id, p_fsa_id) ON CONFLICT DO NOTHING;
        SELECT version INTO v_version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;
    END IF;
    RETURN v_version;
END;
$$;
