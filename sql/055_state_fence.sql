-- sms.state_fence(tenant, fsa, exclusive): the transaction-level advisory lock that keeps a purge
-- from missing a row of its state. Whatever writes a state's rows outside the delta path (which
-- sms.state_lock serialises already) — comments, aliases, policies, cached summaries, its TTL —
-- takes it shared first, and a purge takes it exclusively (sms.erase_state): such a write either
-- commits before the purge reads what to delete, or starts after the purge and sees the state
-- gone. Shared holders never wait for one another, nor for the state's delta writers.
CREATE OR REPLACE FUNCTION sms.state_fence(p_tenant_id text, p_fsa_id text, p_exclusive boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_key bigint := hashtextextended(p_tenant_id, 41) # hashtextextended(p_fsa_id, 43);
BEGIN
    IF p_exclusive THEN
        PERFORM pg_advisory_xact_lock(v_key);
    ELSE
        PERFORM pg_advisory_xact_lock_shared(v_key);
    END IF;
END;
$$;
