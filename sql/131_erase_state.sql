-- sms.check_tenant_here(tenant): raises feature_not_supported unless this node holds the tenant's
-- rows — always so on one server; on Citus when the tenant's shards are placed on this node. An
-- erasure takes the state's lock and fence, advisory locks, which meet the state's writers only on
-- that node: a purge that a coordinator ran statement by statement would take them where no writer
-- does, pass a write in flight and leave its rows behind (seen on a cluster: the state then refused
-- its next delta). sms.erase_state and sms.compact call it first. The argument is not named
-- p_tenant_id, which `sms migrate --citus` would distribute the function by: a bare call would then
-- answer on the tenant's node instead of this one.
CREATE OR REPLACE FUNCTION sms.check_tenant_here(p_tenant text) RETURNS void
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- each statement is planned when it first runs: the Citus catalogs are read only where they are
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = 'sms.states'::regclass)
       OR EXISTS (SELECT FROM pg_catalog.pg_dist_placement p
                   WHERE p.shardid = pg_catalog.get_shard_id_for_distribution_column('sms.states', p_tenant)
                     AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)) THEN
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
        MESSAGE = format('the rows of tenant %s are on another node: erase them there, by a bare call that '
                         'Citus delegates (SELECT sms.purge_state(…), sms.compact(…), sms.expire_state(…)), '
                         'not statement by statement from here', p_tenant);
END;
$$;

-- sms.erase_state(tenant, fsa, actor, key_id): the purge itself, for sms.purge_state and
-- sms.expire_states, which check who may ask; the service's role may not call it. Under the
-- state's lock (no delta interleaves) and its fence (sms.state_fence: no comment, alias, policy,
-- cached summary or TTL being written is passed) it records the erasure in sms.erasures, then
-- deletes the state's rows from every table of schema sms that has tenant_id and fsa_id columns —
-- found in the catalog, so a table added later is erased too — but sms.erasures; the append-only
-- logs let these deletes through because of that record (sms.refuse_log_change). It then fills in
-- the record's counts and tells the state's subscribers on sms_changes (unless sms.notify is
-- 'off'): {"tenant_id", "fsa_id", "purged": true, "version"}. The state then reads as never
-- written. Returns the record. It runs only on the tenant's node (sms.check_tenant_here).
CREATE OR REPLACE FUNCTION sms.erase_state(p_tenant_id text, p_fsa_id text, p_actor text, p_key_id text)
RETURNS sms.erasures
LANGUAGE plpgsql AS $$
DECLARE
    v_erasure sms.erasures;
    v_table   text;
    v_count   bigint;
    v_removed jsonb := '{}';
BEGIN
    PERFORM sms.check_tenant_here(p_tenant_id);
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id, true);
    INSERT INTO sms.erasures (tenant_id, fsa_id, action, actor, key_id, last_version)
    VALUES (p_tenant_id, p_fsa_id, 'purge', p_actor, p_key_id, sms.current_version(p_tenant_id, p_fsa_id))
    RETURNING * INTO v_erasure;
    FOR v_table IN
        SELECT c.relname FROM pg_catalog.pg_class c
         WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
           AND c.relname <> 'erasures'
           -- not a shard of one (on a Citus node: <table>_<shard id>, beside its table)
           AND NOT EXISTS (SELECT FROM pg_catalog.pg_class t
                            WHERE t.relnamespace = c.relnamespace AND c.relname ~ '_[0-9]+$'
                              AND t.relname = regexp_replace(c.relname, '_[0-9]+$', ''))
           AND (SELECT count(*) FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attname IN ('tenant_id', 'fsa_id') AND NOT a.attisdropped) = 2
         ORDER BY c.relname = 'states', c.relname  -- the header last
    LOOP
        EXECUTE format('DELETE FROM sms.%I WHERE tenant_id = $1 AND fsa_id = $2', v_table) USING p_tenant_id, p_fsa_id;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_removed := v_removed || jsonb_build_object(v_table, v_count);
    END LOOP;
    UPDATE sms.erasures SET removed = v_removed
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND erasure_id = v_erasure.erasure_id
    RETURNING * INTO v_erasure;
    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        PERFORM pg_notify('sms_changes', jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
                                                            'purged', true, 'version', v_erasure.last_version)::text);
    END IF;
    RETURN v_erasure;
END;
$$;
REVOKE ALL ON FUNCTION sms.erase_state(text, text, text, text) FROM PUBLIC;
