-- Frozen copy of what revision 0027 installs (the sql/ files as they were), run as one script.

DROP FUNCTION sms.put_entry(text, text, text, boolean, text, jsonb, jsonb, bigint);  -- it now takes the old value's version
DROP FUNCTION sms.write_op(text, text, bigint, jsonb);  -- it now returns the op's path and collection too

-- ===== sql/029_expand_nested.sql
-- sms.expand_nested(delta): the original service's first-generation form, operators inside plain
-- objects ({"inventory": {"kitkats": {"$inc": 5000}}}), as dotted paths
-- ({"inventory.kitkats": {"$inc": 5000}}), so that the other members of `inventory` are kept: a
-- value that is a plain object holding an operator object anywhere below becomes one path per leaf
-- (sms.nested_leaves: plain leaves are set, operator objects apply). A plain object with no
-- operator inside keeps its meaning: the path is set to it. A path reached twice (once nested, once
-- dotted) is invalid (SM001).
CREATE OR REPLACE FUNCTION sms.expand_nested(p_delta jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_nested text[];  -- the keys whose value is a plain object with an operator object below
    v_key    text;
    v_value  jsonb;
    v_leaf   record;
    v_out    jsonb := '{}';
BEGIN
    IF jsonb_typeof(p_delta) IS DISTINCT FROM 'object' THEN
        RETURN p_delta;  -- sms.normalize_delta says what is wrong with it
    END IF;
    IF NOT jsonb_path_exists(p_delta, 'strict $.keyvalue() ? (!(@.key starts with "$") && @.value.type() == "object"
                                       && exists (@.value.keyvalue() ? (!(@.key starts with "$"))))') THEN
        RETURN p_delta;  -- no plain object among its values (most deltas): an expression, not a query
    END IF;
    SELECT array_agg(key) INTO v_nested FROM jsonb_each(p_delta)
     WHERE left(key, 1) <> '$' AND jsonb_typeof(value) = 'object'
       AND EXISTS (SELECT FROM jsonb_object_keys(value) k WHERE left(k, 1) <> '$')
       AND jsonb_path_exists(value, 'strict $.** ? (@.type() == "object").keyvalue() ? (@.key starts with "$")');
    IF v_nested IS NULL THEN
        RETURN p_delta;  -- nothing nested: most deltas, in this one statement
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_delta) LOOP
        IF v_key = ANY(v_nested) THEN
            FOR v_leaf IN SELECT l.path, l.value FROM sms.nested_leaves(v_key, v_value) l LOOP
                IF v_out ? v_leaf.path OR p_delta ? v_leaf.path THEN
                    PERFORM sms.raise_invalid(v_leaf.path, format('"%s" is addressed twice', v_leaf.path));
                END IF;
                v_out := v_out || jsonb_build_object(v_leaf.path, v_leaf.value);
            END LOOP;
        ELSIF v_out ? v_key THEN
            PERFORM sms.raise_invalid(v_key, format('"%s" is addressed twice', v_key));
        ELSE
            v_out := v_out || jsonb_build_object(v_key, v_value);
        END IF;
    END LOOP;
    RETURN v_out;
END;
$$;

-- ===== sql/030_normalize_delta.sql
-- sms.normalize_delta(delta): validates a delta in its wire format (DESIGN §4.1) and returns it
-- normalised:
--   {"ops":    [{"path": [keys], "op": "set|unset|inc|max|min|add|remove|push|merge",
--                "value": operand}, ...],
--    "expect": [{"path": [keys], "value": v} | {"path": [keys], "exists": bool}, ...]}
-- The first-generation nested form is expanded first (sms.expand_nested: operators inside plain
-- objects become dotted paths). Aliases are resolved ($addToSet -> add, $pull -> remove), a plain
-- value becomes "set", $push
-- operands become {"$each": [...], "$slice": n|null} and $add/$remove operands arrays.
-- Anything malformed raises SM001 naming the offending path, and every value and operand is
-- checked by sms.check_value (nesting, key lengths, numbers, no $-keys in plain values); nothing is
-- read or written.
-- Paths may not overlap (one a prefix of another), so the order of ops never matters.
CREATE OR REPLACE FUNCTION sms.normalize_delta(p_delta jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_key    text;
    v_value  jsonb;
    v_path   text[];
    v_op     text;
    v_arg    jsonb;
    v_ops    jsonb := '[]';
    v_expect jsonb := '[]';
    v_firsts text[] := '{}';    -- the paths' first keys
    v_shared boolean := false;  -- whether two paths share their first key
    v_clash  record;
    v_count  bigint;    -- an object value's keys: how many,
    v_all_ops boolean;  -- whether all start with $,
    v_names  text;      -- and their names
BEGIN
    IF p_delta IS NULL OR jsonb_typeof(p_delta) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = format('a delta must be a JSON object of paths, not %s',
                             coalesce(jsonb_typeof(p_delta), 'nothing'));
    END IF;

    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(sms.expand_nested(p_delta)) LOOP
        IF v_key = '$expect' THEN
            PERFORM sms.check_value(v_key, v_value);
            v_expect := sms.normalize_expect(v_value);
            CONTINUE;
        END IF;
        IF left(v_key, 1) = '$' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM001',
                MESSAGE = format('"%s" is not a path: top-level keys starting with $ are reserved '
                                 '(only $expect is defined)', v_key),
                DETAIL = jsonb_build_object('path', v_key)::text;
        END IF;
        IF length(v_key) > sms.limit_setting('max_key_length', 512) THEN
            PERFORM sms.raise_invalid(left(v_key, 100), format('a path is %s characters long; at most %s are allowed',
                                                               length(v_key), sms.limit_setting('max_key_length', 512)));
        END IF;
        v_path := sms.parse_path(v_key);
        v_shared := v_shared OR (v_path[1] = ANY(v_firsts)) IS NOT FALSE;
        v_firsts := v_firsts || v_path[1];

        v_count := 0;
        IF jsonb_typeof(v_value) = 'object' THEN  -- one look at its keys
            SELECT count(*), bool_and(left(k, 1) = '$'), string_agg(k, ', ')
              INTO v_count, v_all_ops, v_names FROM jsonb_object_keys(v_value) k;
        END IF;
        IF v_count > 0 AND v_all_ops THEN
            -- an operator object: exactly one $-key
            IF v_count > 1 THEN
                RAISE EXCEPTION USING ERRCODE = 'SM001',
                    MESSAGE = format('"%s" has several operators (%s); give one operator per path',
                                     v_key, v_names),
                    DETAIL = jsonb_build_object('path', v_key)::text;
            END IF;
            v_op := v_names;
            v_arg := v_value -> v_op;
            PERFORM sms.check_value(v_key, v_arg);
            v_op := CASE v_op
                WHEN '$set' THEN 'set'     WHEN '$unset' THEN 'unset'
                WHEN '$inc' THEN 'inc'     WHEN '$max' THEN 'max'      WHEN '$min' THEN 'min'
                WHEN '$add' THEN 'add'     WHEN '$addToSet' THEN 'add'
                WHEN '$remove' THEN 'remove' WHEN '$pull' THEN 'remove'
                WHEN '$push' THEN 'push'   WHEN '$merge' THEN 'merge'
                ELSE sms.raise_invalid(v_key, format('unknown operator %s at "%s" (known: $set, '
                    '$unset, $inc, $max, $min, $add, $addToSet, $remove, $pull, $push, $merge)',
                    v_op, v_key)) END;
            v_arg := sms.normalize_operand(v_key, v_op, v_arg);
        ELSE
            PERFORM sms.check_value(v_key, v_value, true);
            v_op := 'set';
            v_arg := v_value;
        END IF;
        v_ops := v_ops || jsonb_build_object('path', to_jsonb(v_path), 'op', v_op, 'value', v_arg);
    END LOOP;

    IF v_ops = '[]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = 'the delta changes nothing: give at least one path';
    END IF;

    -- Overlapping paths: in sorted order a path's prefix-sibling sorts right before it. Paths that
    -- overlap share their first key: when none do (most deltas), there is nothing to look for.
    IF v_shared THEN
        SELECT prev, cur INTO v_clash FROM (
            SELECT p AS cur, lag(p) OVER (ORDER BY p) AS prev
              FROM (SELECT ARRAY(SELECT jsonb_array_elements_text(o -> 'path')) COLLATE "C" AS p
                      FROM jsonb_array_elements(v_ops) o) s
        ) t WHERE prev IS NOT NULL AND cur[1:cardinality(prev)] = prev LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'SM001',
                MESSAGE = format('paths "%s" and "%s" overlap; address each part of the state once',
                                 sms.format_path(v_clash.prev), sms.format_path(v_clash.cur)),
                DETAIL = jsonb_build_object('path', sms.format_path(v_clash.cur))::text;
        END IF;
    END IF;

    RETURN jsonb_build_object('ops', v_ops, 'expect', v_expect);
END;
$$;

-- ===== sql/031_check_number.sql
-- sms.check_number(path, value): every number in `value` has an absolute value below 10^18 and at
-- most 18 decimal places: what every reader renders back exactly, in SQL and in Python alike (an
-- integer fits 64 bits, no number has more than 36 digits). Raises 22003 (number out of range)
-- naming the path and the number. Checked on what deltas send and on what $inc makes of it. One
-- walk of the value; the tests are in the order that keeps the arithmetic off numbers of
-- thousands of digits (jsonpath's || stops at the first that holds).
CREATE OR REPLACE FUNCTION sms.check_number(p_path text, p_value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_found jsonb;
BEGIN
    IF jsonb_typeof(p_value) IN ('string', 'boolean', 'null') THEN
        RETURN;  -- no number in it: most values, without a walk
    END IF;
    v_found := jsonb_path_query_first(p_value, 'strict $.** ? (@.type() == "number"
        && (@ >= 1e18 || @ <= -1e18 || (@ != 0 && @ < 1e-18 && @ > -1e-18) || (@ * 1e18).floor() != @ * 1e18))');
    IF v_found IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('"%s" would hold the number %s, out of range: numbers are kept with an absolute value '
                             'below 10^18 and at most 18 decimal places', p_path,
                             CASE WHEN length(v_found::text) > 40 THEN left(v_found::text, 20) || '…'
                                  ELSE v_found::text END),
            DETAIL = jsonb_build_object('path', p_path)::text;
    END IF;
END;
$$;

-- ===== sql/032_check_value.sql
-- sms.check_value(path, value, literal): a value a delta may store at `path` (DESIGN §4; nothing a
-- client sends can break a state):
--   * nested at most sms.max_depth (32) levels, counting the delta itself as one and the value as
--     the second (an operator's operand counts as the value it stands for);
--   * keys at every depth at most sms.max_key_length (512) characters;
--   * numbers within sms.check_number's range;
--   * with `literal` (a plain value, not a $set operand), no key starting with $: a nested
--     {"$inc": 1} would be stored literally where an operator was meant.
-- Raises SM001 (invalid) naming the path, or 22003 (sms.check_number). Three walks of the value
-- (numbers, depth, keys), in the database, never in the service's event loop.
CREATE OR REPLACE FUNCTION sms.check_value(p_path text, p_value jsonb, p_literal boolean DEFAULT false)
RETURNS void
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_depth  integer;
    v_length integer;
    v_key    text;
BEGIN
    IF jsonb_typeof(p_value) NOT IN ('number', 'object', 'array') THEN
        RETURN;  -- a string, boolean or null: nothing to check
    END IF;
    PERFORM sms.check_number(p_path, p_value);
    IF jsonb_typeof(p_value) = 'number' THEN
        RETURN;
    END IF;
    v_depth := sms.limit_setting('max_depth', 32);
    v_length := sms.limit_setting('max_key_length', 512);
    IF jsonb_path_exists(p_value, format('strict $.**{%s to last} ? (@.type() == "object" || @.type() == "array")',
                                         v_depth - 1)::jsonpath) THEN
        PERFORM sms.raise_invalid(p_path, format('the value at "%s" is nested more than %s levels deep (the delta '
                                                 'counting as one)', p_path, v_depth));
    END IF;
    SELECT k.key INTO v_key
      FROM jsonb_path_query(p_value, 'strict $.** ? (@.type() == "object").keyvalue().key') j,
           LATERAL (SELECT j #>> '{}' AS key) k
     WHERE length(k.key) > v_length OR (p_literal AND left(k.key, 1) = '$')
     LIMIT 1;
    IF length(v_key) > v_length THEN
        PERFORM sms.raise_invalid(p_path, format('the value at "%s" holds a key of %s characters; at most %s are '
                                                 'allowed', p_path, length(v_key), v_length));
    ELSIF v_key IS NOT NULL THEN
        PERFORM sms.raise_invalid(p_path, format(
            'the value at "%s" holds keys starting with $ (operators work only at the top of a path''s value); use '
            '{"$set": ...} to store such keys literally', p_path));
    END IF;
END;
$$;

-- ===== sql/059_put_entry.sql
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

-- ===== sql/060_write_op.sql
-- sms.write_op(tenant, fsa, version, op): applies one normalised op to sms.entries, touching only
-- the entries on its path (cost ∝ the entry, never the state), and records what changed in
-- sms.entry_history. Returns how the state's entry count and content bytes changed, and the op's
-- dotted path and collection (its first key), which the log keeps. The caller
-- (sms.apply_delta) holds the state's lock. Its statements keep their generic plans: the planner
-- made a new custom plan for the read of the collection's row on every call (the same index scan;
-- 14 % of a hot delta's time in one profile).
CREATE OR REPLACE FUNCTION sms.write_op(p_tenant_id text, p_fsa_id text, p_version bigint, p_op jsonb,
                                        OUT entry_delta bigint, OUT byte_delta bigint, OUT op_path text,
                                        OUT op_collection text)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_keys text[] := ARRAY(SELECT jsonb_array_elements_text(p_op -> 'path'));
    v_op   text   := p_op ->> 'op';
    v_arg  jsonb  := p_op -> 'value';
    v_at   text   := sms.format_path(v_keys);
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
    op_collection := v_keys[1];
    SELECT value, version INTO v_top, v_top_version FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1] AND NOT is_member;

    IF cardinality(v_keys) = 1 AND v_op IN ('set', 'unset') THEN
        -- replace or remove a whole top-level key
        WITH gone AS (
            DELETE FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
            RETURNING is_member, member, octet_length(value::text) AS size),
        logged AS (
            INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
            SELECT p_tenant_id, p_fsa_id, v_keys[1], is_member, member, p_version, NULL FROM gone
            ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = NULL)
        SELECT -count(*), -coalesce(sum(size), 0) INTO entry_delta, byte_delta FROM gone;
        IF v_op = 'set' THEN
            WITH added AS (
                INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
                SELECT p_tenant_id, p_fsa_id, v_keys[1], false, '',
                       CASE WHEN jsonb_typeof(v_arg) = 'object' THEN '{}' ELSE v_arg END, p_version
                UNION ALL
                SELECT p_tenant_id, p_fsa_id, v_keys[1], true, key, value, p_version
                  FROM jsonb_each(CASE WHEN jsonb_typeof(v_arg) = 'object' THEN v_arg ELSE '{}' END)
                RETURNING is_member, member, value, octet_length(value::text) AS size),
            logged AS (
                INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
                SELECT p_tenant_id, p_fsa_id, v_keys[1], is_member, member, p_version, value FROM added
                ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version)
                DO UPDATE SET value = EXCLUDED.value)
            SELECT entry_delta + count(*), byte_delta + sum(size) INTO entry_delta, byte_delta FROM added;
        END IF;
        IF jsonb_typeof(v_top) = 'object' OR (v_op = 'set' AND jsonb_typeof(v_arg) = 'object') THEN
            -- a collection was replaced or removed: count its members afresh
            PERFORM sms.count_members(p_tenant_id, p_fsa_id, v_keys[1], p_version);
        END IF;
        RETURN;
    END IF;

    IF cardinality(v_keys) = 1 AND v_op <> 'merge' THEN
        -- an operator on a top-level value; on an object marker apply_op raises the type mismatch
        v_new := sms.apply_op(v_top, '{}', v_op, v_arg, v_at);
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', v_top, v_top_version, v_new, p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        RETURN;
    END IF;

    IF cardinality(v_keys) = 1 AND jsonb_typeof(v_top) <> 'object' THEN
        -- $merge replaces a value that is not an object (RFC 7396): with an empty object's marker
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', v_top, v_top_version, '{}', p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        v_top := '{}';
        v_top_version := p_version;
    END IF;
    IF v_top IS NOT NULL AND jsonb_typeof(v_top) <> 'object' THEN
        -- writing through a scalar or array: apply_op raises (or ignores $unset/$remove)
        PERFORM sms.apply_op(v_top, v_keys[2:], v_op, v_arg, v_at);
        RETURN;
    END IF;
    IF v_top IS NULL AND v_op IN ('unset', 'remove') THEN
        RETURN;
    END IF;
    IF v_top IS NULL THEN
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', NULL, NULL, '{}', p_version);
        entry_delta := entry_delta + v_put.entry_delta;
        byte_delta := byte_delta + v_put.byte_delta;
        v_top_version := p_version;
    END IF;

    -- $merge on a whole collection touches one member per key of the patch; any other op one member
    -- (named without a query: nearly every op)
    IF cardinality(v_keys) > 1 THEN
        v_members := ARRAY[v_keys[2]];
    ELSE
        v_members := ARRAY(SELECT jsonb_object_keys(v_arg));
    END IF;
    FOREACH v_key IN ARRAY v_members LOOP
        SELECT value, version INTO v_old, v_old_version FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
           AND is_member AND member = v_key;
        v_new := CASE WHEN cardinality(v_keys) = 1
                      THEN nullif(sms.merge_patch(v_old, v_arg -> v_key), 'null')
                      ELSE sms.apply_op(v_old, v_keys[3:], v_op, v_arg, v_at) END;
        v_put := sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], true, v_key, v_old, v_old_version, v_new, p_version);
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
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
           AND NOT is_member AND member = '';
    END IF;
END;
$$;

-- ===== sql/068_append_delta.sql
-- sms.append_delta(...): the engine behind sms.apply_ops: under the state's lock it checks the
-- idempotency key, the expected version and the preconditions, writes the ops, appends the log row,
-- takes a snapshot when one is due and notifies. With policy targets (sms.policy_targets) it reads
-- the guarded values before and after writing and raises SM011 when the delta breaks a rule, so
-- that sms.apply_ops can undo it and record the refusal. Call sms.apply_ops, never this.
-- Guarantees (for sms.apply_ops):
--   * atomic: the entries, the log row, its place in the tenant's feed and the NOTIFY commit
--     together or not at all;
--   * serial per state: sms.lock_state serialises writers, versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and the preconditions are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * a type mismatch (SM002) applies nothing;
--   * published (sms.publish): a place in the tenant's feed and exactly one NOTIFY on channel
--     sms_changes with ids only (< 1 KB, unless the setting sms.notify is 'off') — or, inside
--     sms.apply_deltas (the setting sms.batch), one for the whole batch at its end;
--   * every sms.snapshot_every() versions, a snapshot (sms.take_snapshot).
CREATE OR REPLACE FUNCTION sms.append_delta(
    p_tenant_id        text,
    p_fsa_id           text,
    p_ops              jsonb,
    p_expect           jsonb  DEFAULT '[]',
    p_actor            text   DEFAULT NULL,
    p_lineage_id       text   DEFAULT NULL,
    p_delta_id         uuid   DEFAULT NULL,
    p_expected_version bigint DEFAULT NULL,
    p_meta             jsonb  DEFAULT '{}',
    p_trace_id         text   DEFAULT NULL,
    p_parent_id        text   DEFAULT NULL,
    p_targets          jsonb  DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_ops         jsonb := p_ops;
    v_version     bigint;
    v_prior       sms.deltas;
    v_failed      jsonb;
    v_op          jsonb;
    v_entries     bigint := 0;
    v_bytes       bigint := 0;
    v_paths       text[];
    v_collections text[];
    v_notice      jsonb;
    v_before      jsonb;
    v_violations  jsonb;
    v_written     record;
BEGIN
    v_version := sms.lock_state(p_tenant_id, p_fsa_id);

    IF p_delta_id IS NOT NULL THEN
        SELECT * INTO v_prior FROM sms.deltas
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND delta_id = p_delta_id;
        IF FOUND THEN
            IF v_prior.ops <> v_ops THEN
                RAISE EXCEPTION USING ERRCODE = 'SM005',
                    MESSAGE = format('delta_id %s was already used for a different delta (version %s)',
                                     p_delta_id, v_prior.version),
                    DETAIL = jsonb_build_object('delta_id', p_delta_id, 'version', v_prior.version)::text;
            END IF;
            RETURN jsonb_build_object('success', true, 'version', v_prior.version, 'delta_id', v_prior.delta_id,
                                      'changed', to_jsonb(v_prior.paths), 'duplicate', true);
        END IF;
    END IF;

    IF p_expected_version IS NOT NULL AND p_expected_version <> v_version THEN
        RAISE EXCEPTION USING ERRCODE = 'SM003',
            MESSAGE = format('expected version %s, but the state is at version %s', p_expected_version, v_version),
            DETAIL = jsonb_build_object('current_version', v_version,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, v_ops))::text;
    END IF;

    IF p_expect <> '[]' THEN  -- not a statement for nothing to check: most deltas
        SELECT jsonb_agg(sms.format_path(k)) INTO v_failed
          FROM jsonb_array_elements(p_expect) e,
               LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(e -> 'path'))) p(k),
               LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) cur
         WHERE CASE WHEN e ? 'exists' THEN (cur IS NOT NULL) <> (e ->> 'exists')::boolean
                    ELSE cur IS DISTINCT FROM e -> 'value' END;
    END IF;
    IF v_failed IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SM004',
            MESSAGE = format('$expect failed at %s', (SELECT string_agg(format('"%s"', f), ', ')
                                                       FROM jsonb_array_elements_text(v_failed) f)),
            DETAIL = jsonb_build_object('current_version', v_version, 'failed', v_failed,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, p_expect))::text;
    END IF;

    IF p_targets IS NOT NULL THEN
        v_before := sms.policy_values(p_tenant_id, p_fsa_id, p_targets);
    END IF;
    v_version := v_version + 1;
    FOR v_op IN SELECT value FROM jsonb_array_elements(v_ops) LOOP
        v_written := sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op);  -- an expression, not a query
        v_entries := v_entries + v_written.entry_delta;
        v_bytes := v_bytes + v_written.byte_delta;
        v_paths := v_paths || v_written.op_path;
        v_collections := v_collections || v_written.op_collection;
    END LOOP;
    IF cardinality(v_collections) > 1 THEN  -- the log keeps them sorted, each once
        v_collections := ARRAY(SELECT DISTINCT c FROM unnest(v_collections) c ORDER BY c);
    END IF;
    IF p_targets IS NOT NULL THEN
        v_violations := sms.policy_violations(p_targets, v_before, sms.policy_values(p_tenant_id, p_fsa_id, p_targets),
                                              sms.aml_level(p_meta));
        IF v_violations IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'SM011',
                MESSAGE = 'policy violation: ' || (v_violations -> 0 ->> 'message')
                          || CASE WHEN jsonb_array_length(v_violations) > 1
                                  THEN format(' (and %s more)', jsonb_array_length(v_violations) - 1) ELSE '' END,
                DETAIL = jsonb_build_object('violations', v_violations, 'current_version', v_version - 1)::text;
        END IF;
    END IF;

    INSERT INTO sms.deltas (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, parent_id,
                            meta, ops, paths, collections)
    VALUES (p_tenant_id, p_fsa_id, v_version, coalesce(p_delta_id, gen_random_uuid()), p_actor, p_lineage_id,
            p_trace_id, p_parent_id, coalesce(p_meta, '{}'), v_ops, v_paths, v_collections)
    RETURNING * INTO v_prior;

    UPDATE sms.states
       SET version = v_version, updated_at = now(),
           entry_count = entry_count + v_entries, content_bytes = content_bytes + v_bytes
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;

    IF v_version % sms.snapshot_every() = 0 THEN
        PERFORM sms.take_snapshot(p_tenant_id, p_fsa_id, v_version);
    END IF;

    IF coalesce(current_setting('sms.batch', true), '') = '' THEN  -- a batch publishes once, at its end
        v_notice := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                       'delta_id', v_prior.delta_id, 'actor', p_actor,
                                       'lineage_id', p_lineage_id, 'collections', to_jsonb(v_collections));
        IF octet_length(v_notice::text) > 1000 THEN
            -- many or long collection names: send ids only; subscribers read the rest from the log
            v_notice := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                           'delta_id', v_prior.delta_id, 'truncated', true);
        END IF;
        PERFORM sms.publish(p_tenant_id, p_fsa_id, v_version, v_version, v_notice);
    END IF;

    RETURN jsonb_build_object('success', true, 'version', v_version, 'delta_id', v_prior.delta_id,
                              'changed', to_jsonb(v_paths), 'duplicate', false);
END;
$$;

-- ===== sql/072_apply_deltas.sql
-- sms.write_error(sqlstate): whether an error belongs to one write of a batch — its delta or its
-- metadata (SM codes; data, integrity and size errors; a row of another tenant) — rather than to the
-- whole call (a timeout, a shutdown, a missing schema), which fails every write of it.
CREATE OR REPLACE FUNCTION sms.write_error(p_sqlstate text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT left(p_sqlstate, 2) IN ('SM', '22', '23', '54') OR p_sqlstate = '42501';
$$;

-- sms.apply_write(tenant, fsa, write): sms.apply_delta for one write of a batch, given as
-- {"delta", "actor", "lineage_id", "delta_id", "expected_version", "meta", "trace_id", "parent_id"}
-- (only "delta" is required).
CREATE OR REPLACE FUNCTION sms.apply_write(p_tenant_id text, p_fsa_id text, p_write jsonb) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(p_write) IS DISTINCT FROM 'object' OR NOT p_write ? 'delta' THEN
        PERFORM sms.raise_invalid('', 'each write of a batch is an object with its "delta" and its metadata');
    END IF;
    IF p_write ->> 'delta_id' !~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$' THEN
        PERFORM sms.raise_invalid('delta_id', 'delta_id must be a UUID');
    END IF;
    IF p_write ? 'expected_version' AND jsonb_typeof(p_write -> 'expected_version') NOT IN ('number', 'null') THEN
        PERFORM sms.raise_invalid('expected_version', 'expected_version must be a version number');
    END IF;
    RETURN sms.apply_delta(p_tenant_id, p_fsa_id, p_write -> 'delta', p_write ->> 'actor', p_write ->> 'lineage_id',
                           (p_write ->> 'delta_id')::uuid, (p_write ->> 'expected_version')::bigint,
                           coalesce(p_write -> 'meta', '{}'), p_write ->> 'trace_id', p_write ->> 'parent_id');
END;
$$;

-- sms.apply_deltas(tenant, fsa, writes, atomic): applies a batch of writes (a JSON array of what
-- sms.apply_write takes) to one state in this transaction, in order, and returns their results in
-- order: each exactly what sms.apply_delta would have answered alone, at the version it got, or,
-- for a write it refused, {"success": false, "sqlstate", "message", "detail"} (the error it
-- would have raised) or the policy refusal sms.apply_ops returns. This is group commit (DESIGN
-- §11): many deltas, one transaction, one WAL flush, one NOTIFY.
--   * independent (the default): each write runs in a subtransaction of its own, so one that fails
--     is refused alone and the others commit, with gap-free versions;
--   * atomic: all or nothing. The first write that fails stops the batch and rolls it back; its
--     result is its error (a policy refusal stays recorded in sms.refusals), every other write's
--     is SM014 (not applied).
-- The state's lock is taken once, first, for the whole batch. Errors that are not a write's own
-- (a timeout, a shutdown) fail the call. The versions the batch made take one place in the
-- tenant's feed, and one NOTIFY on sms_changes carries their range (sms.publish): {"tenant_id",
-- "fsa_id", "version" (the last), "from_version", "deltas" (how many)}.
CREATE OR REPLACE FUNCTION sms.apply_deltas(
    p_tenant_id text,
    p_fsa_id    text,
    p_writes    jsonb,
    p_atomic    boolean DEFAULT false
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_batch   text := current_setting('sms.batch', true);
    v_made    bigint[];
    v_results jsonb[] := '{}';
    v_result  jsonb;
    v_write   jsonb;
    v_index   integer := 0;
    v_state   text;
    v_message text;
    v_detail  text;
BEGIN
    IF jsonb_typeof(p_writes) IS DISTINCT FROM 'array' THEN
        PERFORM sms.raise_invalid('', 'a batch is a JSON array of writes');
    END IF;
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    PERFORM sms.state_lock(p_tenant_id, p_fsa_id);
    -- the batch's first version: its writes do not publish (the batch does, once) and move a
    -- collection's marker row once for all of them (sms.write_op)
    PERFORM set_config('sms.batch', (sms.current_version(p_tenant_id, p_fsa_id) + 1)::text, true);

    IF p_atomic THEN
        BEGIN
            FOR v_write IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
                v_index := v_index + 1;
                v_result := sms.apply_write(p_tenant_id, p_fsa_id, v_write);
                IF (v_result ->> 'success')::boolean IS NOT TRUE THEN
                    RAISE EXCEPTION USING ERRCODE = 'SM014', MESSAGE = 'a write of the batch was refused';
                END IF;
                v_results := v_results || v_result;
            END LOOP;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
            IF v_state = 'SM014' THEN
                -- a policy refusal: the rollback took its record with it, so it is recorded again
                v_result := sms.record_refusal(p_tenant_id, p_fsa_id, sms.normalize_delta(v_write -> 'delta') -> 'ops',
                                               v_write ->> 'actor', v_write ->> 'lineage_id',
                                               (v_write ->> 'delta_id')::uuid, coalesce(v_write -> 'meta', '{}'),
                                               v_write ->> 'trace_id', v_result ->> 'message',
                                               jsonb_build_object('current_version', v_result -> 'version',
                                                                  'violations', v_result -> 'violations'));
            ELSIF sms.write_error(v_state) THEN
                v_result := jsonb_build_object('success', false, 'sqlstate', v_state, 'message', v_message,
                                               'detail', v_detail);
            ELSE
                RAISE;
            END IF;
            SELECT array_agg(CASE WHEN n = v_index THEN v_result
                                  ELSE jsonb_build_object(
                                      'success', false, 'sqlstate', 'SM014',
                                      'message', format('not applied: write %s of the batch failed', v_index - 1),
                                      'detail', jsonb_build_object('index', v_index - 1)::text) END ORDER BY n)
              INTO v_results
              FROM generate_series(1, jsonb_array_length(p_writes)) n;
        END;
    ELSE
        FOR v_write IN SELECT value FROM jsonb_array_elements(p_writes) LOOP
            BEGIN
                v_result := sms.apply_write(p_tenant_id, p_fsa_id, v_write);
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS v_state = RETURNED_SQLSTATE, v_message = MESSAGE_TEXT,
                                        v_detail = PG_EXCEPTION_DETAIL;
                IF NOT sms.write_error(v_state) THEN
                    RAISE;
                END IF;
                v_result := jsonb_build_object('success', false, 'sqlstate', v_state, 'message', v_message,
                                               'detail', v_detail);
            END;
            v_results := v_results || v_result;
        END LOOP;
    END IF;

    PERFORM set_config('sms.batch', coalesce(v_batch, ''), true);
    SELECT array_agg((r ->> 'version')::bigint) INTO v_made FROM unnest(v_results) r
     WHERE (r ->> 'success')::boolean AND NOT (r ->> 'duplicate')::boolean;
    IF v_made IS NOT NULL THEN
        -- gap-free: a refused write took no version
        PERFORM sms.publish(p_tenant_id, p_fsa_id, v_made[1], v_made[cardinality(v_made)],
                            jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id,
                                               'version', v_made[cardinality(v_made)], 'from_version', v_made[1],
                                               'deltas', cardinality(v_made)));
    END IF;
    RETURN to_jsonb(v_results);
END;
$$;
