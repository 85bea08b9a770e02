-- sms.compact(tenant, fsa, before_version, actor, key_id): drops the state's log and history
-- older than a snapshot at `before_version` (taken now from the history if there is none), so
-- that they stop growing with the state's age (DESIGN §14). Afterwards time travel and replay
-- start at that snapshot: the state at `before_version` and later reads as before, and its
-- deltas after it are kept; an older version, or the log after one (sms.check_version,
-- sms.check_since), is SM015 (history compacted). What goes: the deltas up to `before_version`,
-- the older snapshots, and the history rows up to it but the last one of each entry that exists
-- there (so that a path's history still says what its next change changed it from). Under the
-- state's lock; recorded in sms.erasures (action 'compact', through_version) with the rows each
-- table lost. `before_version` runs from 1 to the current version (SM010 beyond, like time
-- travel), and not below an earlier compaction point (SM015). The service may compact only
-- states of the tenants it acts for (sms.caller_tenants). Runs only on the tenant's node
-- (sms.check_tenant_here), where the state's writers take its lock. Returns the record.
CREATE OR REPLACE FUNCTION sms.compact(p_tenant_id text, p_fsa_id text, p_before_version bigint,
                                       p_actor text DEFAULT NULL, p_key_id text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_erasure sms.erasures;
    v_deltas  bigint;
    v_history bigint;
    v_entries bigint;
    v_snaps   bigint;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('key_id', p_key_id);
    IF v_allowed IS NOT NULL AND NOT p_tenant_id = ANY (v_allowed) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no state %s/%s', p_tenant_id, p_fsa_id);
    END IF;
    IF p_before_version IS NULL OR p_before_version < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'invalid_parameter_value',
            MESSAGE = 'before_version is the version to keep the state from: 1 or more';
    END IF;
    PERFORM sms.check_tenant_here(p_tenant_id);
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_before_version);

    IF NOT EXISTS (SELECT FROM sms.snapshots
                    WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version = p_before_version) THEN
        -- its entries first: sms.entries_at reads the latest snapshot up to the version
        INSERT INTO sms.snapshot_entries (tenant_id, fsa_id, version, collection, is_member, member, value)
        SELECT p_tenant_id, p_fsa_id, p_before_version, e.collection, e.is_member, e.member, e.value
          FROM sms.entries_at(p_tenant_id, p_fsa_id, p_before_version) e;
        INSERT INTO sms.snapshots (tenant_id, fsa_id, version) VALUES (p_tenant_id, p_fsa_id, p_before_version);
    END IF;
    INSERT INTO sms.erasures (tenant_id, fsa_id, action, actor, key_id, last_version, through_version)
    VALUES (p_tenant_id, p_fsa_id, 'compact', p_actor, p_key_id, sms.current_version(p_tenant_id, p_fsa_id),
            p_before_version)
    RETURNING * INTO v_erasure;

    DELETE FROM sms.deltas WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version <= p_before_version;
    GET DIAGNOSTICS v_deltas = ROW_COUNT;
    DELETE FROM sms.feed WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND to_version <= p_before_version;
    DELETE FROM sms.entry_history h
     USING (SELECT o.collection, o.is_member, o.member, o.version, o.value IS NULL AS removal,
                   max(o.version) OVER (PARTITION BY o.collection, o.is_member, o.member) AS last
              FROM sms.entry_history o
             WHERE o.tenant_id = p_tenant_id AND o.fsa_id = p_fsa_id AND o.version <= p_before_version) old
     WHERE h.tenant_id = p_tenant_id AND h.fsa_id = p_fsa_id
       AND (h.collection, h.is_member, h.member, h.version) = (old.collection, old.is_member, old.member, old.version)
       AND (old.version < old.last OR old.removal);
    GET DIAGNOSTICS v_history = ROW_COUNT;
    DELETE FROM sms.snapshot_entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version < p_before_version;
    GET DIAGNOSTICS v_entries = ROW_COUNT;
    DELETE FROM sms.snapshots WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND version < p_before_version;
    GET DIAGNOSTICS v_snaps = ROW_COUNT;

    UPDATE sms.erasures
       SET removed = jsonb_build_object('deltas', v_deltas, 'entry_history', v_history,
                                        'snapshot_entries', v_entries, 'snapshots', v_snaps)
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND erasure_id = v_erasure.erasure_id
    RETURNING * INTO v_erasure;
    RETURN to_jsonb(v_erasure);
END;
$$;
REVOKE ALL ON FUNCTION sms.compact(text, text, bigint, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.compact(text, text, bigint, text, text) TO sms_api;
