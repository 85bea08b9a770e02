-- sms.write_op(tenant, fsa, version, op, keys): applies one normalised op (`keys`: its path as a
-- text array, which the caller's query over the ops reads) to sms.entries, touching only the
-- entries on its path (cost ∝ the entry, never the state), and records what changed in
-- sms.entry_history. Returns how the state's entry count and content bytes changed, and the op's
-- dotted path and collection (its first key), which the log keeps. The caller (sms.apply_delta)
-- holds the state's lock. Its statements keep their generic plans: the planner made a new custom
-- plan for the read of the collection's row on every call (the same index scan; 14 % of a hot
-- delta's time in one profile).
CREATE OR REPLACE FUNCTION sms.write_op(p_tenant_id text, p_fsa_id text, p_version bigint, p_op jsonb,
                                        p_keys text[], OUT entry_delta bigint, OUT byte_delta bigint,
                                        OUT op_path text, OUT op_collection text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_op   text   := p_op ->> 'op';
    v_arg  jsonb  := p_op -> 'value';
    v_at   text   := sms.format_path(p_keys);
    v_top  jsonb;   -- the top-level row: NULL if absent, the marker '{}' if an object
    v_top_version bigint;
    v_members text[];  -- the members the op writes
    v_key  text;
    v_old  jsonb;
    v_old_version bigint;
    v_changed boolean := false;  -- whether a member changed
    v_new  jsonb;
    v_put  record;  -- what sms.put_entry changed (called as an expression: no query to plan and run)
BEGIN
    entry_delta := 0;
    byte_delta := 0;
    op_path := v_at;
    op_collection := p_keys[1];
    SELECT value, version INTO v_top, v_top_version FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1] AND NOT is_member;

    IF cardinality(p_keys) = 1 AND v_op IN ('set', 'unset') THEN
        -- replace or remove a whole top-level key
        WITH gone AS (
            DELETE FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1]
            RETURNING is_member, member, octet_length(value::text) AS size),
        logged AS (
            INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
            SELECT p_tenant_id, p_fsa_id, p_keys[1], is_member, member, p_version, NULL FROM gone
            ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = NULL)
        SELECT -count(*), -coalesce(sum(size), 0) INTO entry_delta, byte_delta FROM gone;
        IF v_op = 'set' THEN
            WITH added AS (
                INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
                SELECT p_tenant_id, p_fsa_id, p_keys[1], false, '',
                       CASE WHEN jsonb_typeof(v_arg) = 'object' THEN '{}' ELSE v_arg END, p_version
                UNION ALL
                SELECT p_tenant_id, p_fsa_id, p_keys[1], true, key, value, p_version
                  FROM jsonb_each(CASE WHEN jsonb_typeof(v_arg) = 'object' THEN v_arg ELSE '{}' END)
                RETURNING is_member, member, value, octet_length(value::text) AS size),
            logged AS (
                INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
                SELECT p_tenant_id, p_fsa_id, p_keys[1], is_member, member, p_version, value FROM added
                ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version)
                DO UPDATE SET value = EXCLUDED.value)
            SELECT entry_delta + count(*), byte_delta + sum(size) INTO entry_delta, byte_delta FROM added;
        END IF;
        IF jsonb_typeof(v_top) = 'object' OR (v_op = 'set' AND jsonb_typeof(v_arg) = 'object') THEN
            -- a collection was replaced or removed: count its members afresh
            PERFORM sms.count_members(p_tenant_id, p_fsa_id, p_keys[1], p_version);
        END IF;
        RETURN;
    END IF;

    IF cardinality(p_keys) = 1 AND v_op <> 'merge' THEN
        -- an operator on a top-level value; on an object marker apply_op raises the type mismatch
        v_new := sms.apply_op(v_top, '{}', v_op, v_arg, v_at);
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, p_keys[1], false, '', v_top, v_top_version, v_new, p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        RETURN;
    END IF;

    IF cardinality(p_keys) = 1 AND jsonb_typeof(v_top) <> 'object' THEN
        -- $merge replaces a value that is not an object (RFC 7396): with an empty object's marker
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, p_keys[1], false, '', v_top, v_top_version, '{}', p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        v_top := '{}';
        v_top_version := p_version;
    END IF;
    IF v_top IS NOT NULL AND jsonb_typeof(v_top) <> 'object' THEN
        -- writing through a scalar or array: apply_op raises (or ignores $unset/$remove)
        PERFORM sms.apply_op(v_top, p_keys[2:], v_op, v_arg, v_at);
        RETURN;
    END IF;
    IF v_top IS NULL AND v_op IN ('unset', 'remove') THEN
        RETURN;
    END IF;
    IF v_top IS NULL THEN
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, p_keys[1], false, '', NULL, NULL, '{}', p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        v_top_version := p_version;
    END IF;

    -- $merge on a whole collection touches one member per key of the patch; any other op one member
    -- (named without a query: nearly every op)
    IF cardinality(p_keys) > 1 THEN
        v_members := ARRAY[p_keys[2]];
    ELSE
        v_members := ARRAY(SELECT jsonb_object_keys(v_arg));
    END IF;
    FOREACH v_key IN ARRAY v_members LOOP
        SELECT value, version INTO v_old, v_old_version FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1]
           AND is_member AND member = v_key;
        v_new := CASE WHEN cardinality(p_keys) = 1
                      THEN nullif(sms.merge_patch(v_old, v_arg -> v_key), 'null')
                      ELSE sms.apply_op(v_old, p_keys[3:], v_op, v_arg, v_at) END;
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, p_keys[1], true, v_key, v_old, v_old_version, v_new, p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        v_changed := v_changed OR v_put.changed;
    END LOOP;

    -- The collection's marker row moves with its members (sms.slice_coarse compares its version):
    -- to the version of the first change since the last transaction that moved it, which is what
    -- its readers, in other transactions, can tell apart. Once a delta; in a batch (the setting
    -- sms.batch holds its first version) once a batch, rather than a new row version every write.
    IF v_changed AND v_top_version < coalesce(nullif(current_setting('sms.batch', true), '')::bigint, p_version) THEN
        UPDATE sms.entries SET version = p_version
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1]
           AND NOT is_member AND member = '';
    END IF;
END;
$$;
