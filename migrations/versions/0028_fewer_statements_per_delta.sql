-- Frozen copy of what revision 0028 installs (the sql/ files as they were), run as one script.

DROP FUNCTION sms.write_op(text, text, bigint, jsonb);  -- it now takes the op's keys from its caller

-- ===== sql/021_format_path.sql
-- sms.format_escaped_path(keys): sms.format_path, escaping every key's dots and backslashes.
CREATE OR REPLACE FUNCTION sms.format_escaped_path(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.' ORDER BY n)
      FROM unnest(p_keys) WITH ORDINALITY AS t(k, n);
$$;

-- sms.format_path(keys): the dotted path of a key array; the inverse of sms.parse_path. One
-- expression, which the planner inlines into the statement that calls it (a function with an
-- aggregate it cannot: each call cost a delta ~15 µs): keys with no dot or backslash to escape —
-- nearly all — are joined as they are, others escaped by sms.format_escaped_path. STABLE, as
-- array_to_string is: declared IMMUTABLE, it was never inlined (a body may not be more volatile
-- than its function) and ran as a statement of its own on every call.
CREATE OR REPLACE FUNCTION sms.format_path(p_keys text[]) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN array_to_string(p_keys, '') ~ '[.\\]' THEN sms.format_escaped_path(p_keys)
                WHEN cardinality(p_keys) > 0 THEN array_to_string(p_keys, '.') END;
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
            IF sms.needs_check(v_arg) THEN  -- a statement only for what it has to look at
                PERFORM sms.check_value(v_key, v_arg);
            END IF;
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
            IF sms.needs_check(v_value) THEN
                PERFORM sms.check_value(v_key, v_value, true);
            END IF;
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
-- thousands of digits (jsonpath's || stops at the first that holds). Callers test sms.needs_check
-- first: the walk is for values that may hold a number out of range.
CREATE OR REPLACE FUNCTION sms.check_number(p_path text, p_value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_found jsonb := jsonb_path_query_first(p_value, 'strict $.** ? (@.type() == "number"
        && (@ >= 1e18 || @ <= -1e18 || (@ != 0 && @ < 1e-18 && @ > -1e-18) || (@ * 1e18).floor() != @ * 1e18))');
BEGIN
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

-- sms.needs_check(value): whether sms.check_value has anything to look at in a value: an object, an
-- array, or a number sms.check_number refuses (10^18 or more, or more than 18 decimal places: what
-- its walk finds, told by an expression). Strings, booleans, null and numbers in range — nearly
-- every value a delta sends or $inc makes — are left without a statement: callers test this first.
CREATE OR REPLACE FUNCTION sms.needs_check(p_value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(p_value)
           WHEN 'number' THEN abs(p_value::numeric) >= 1e18 OR min_scale(p_value::numeric) > 18
           ELSE jsonb_typeof(p_value) IN ('object', 'array') END;
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
    IF NOT sms.needs_check(p_value) THEN
        RETURN;  -- a string, boolean, null or number in range: nothing to walk
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

-- ===== sql/041_apply_op.sql
-- sms.apply_op(target, path, op, operand, at): applies one normalised operator (see
-- sms.normalize_delta) at `path` inside the JSON value `target` and returns the new value.
-- SQL NULL stands for "absent" both ways: a NULL target is a missing path, a NULL result
-- removes the key. Missing intermediate objects are created; writing through a non-object
-- raises SM002 (type mismatch), as does an operator meeting a value of the wrong type. `at` is
-- the delta's dotted path, for messages. $unset and $remove on a missing path change nothing.
CREATE OR REPLACE FUNCTION sms.apply_op(p_target jsonb, p_path text[], p_op text, p_arg jsonb, p_at text)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_type  text := jsonb_typeof(p_target);
    v_child jsonb;
    v_each  jsonb;
    v_slice int;
BEGIN
    IF cardinality(p_path) > 0 THEN
        IF p_op IN ('unset', 'remove') AND (v_type IS NULL OR v_type <> 'object') THEN
            RETURN p_target;   -- the path does not exist: nothing to remove
        END IF;
        IF v_type IS NULL THEN
            p_target := '{}';
        ELSIF v_type <> 'object' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM002',
                MESSAGE = format('cannot write "%s": a value on the way is %s, not an object', p_at, v_type),
                DETAIL = jsonb_build_object('path', p_at, 'found', v_type)::text;
        END IF;
        v_child := sms.apply_op(p_target -> p_path[1], p_path[2:], p_op, p_arg, p_at);
        IF v_child IS NULL THEN
            RETURN p_target - p_path[1];
        END IF;
        RETURN p_target || jsonb_build_object(p_path[1], v_child);
    END IF;

    CASE p_op
    WHEN 'set' THEN
        RETURN p_arg;
    WHEN 'unset' THEN
        RETURN NULL;
    WHEN 'merge' THEN
        RETURN sms.merge_patch(p_target, p_arg);
    WHEN 'inc' THEN
        IF v_type IS NULL THEN
            RETURN p_arg;
        ELSIF v_type = 'number' THEN
            v_each := to_jsonb(p_target::numeric + p_arg::numeric);
            IF sms.needs_check(v_each) THEN  -- a sum may leave the range its terms kept
                PERFORM sms.check_number(p_at, v_each);
            END IF;
            RETURN v_each;
        END IF;
    WHEN 'max', 'min' THEN
        IF v_type IS NULL THEN
            RETURN p_arg;
        ELSIF v_type = jsonb_typeof(p_arg) AND v_type = 'number' THEN
            RETURN CASE WHEN (p_arg::numeric > p_target::numeric) = (p_op = 'max') THEN p_arg ELSE p_target END;
        ELSIF v_type = jsonb_typeof(p_arg) AND v_type = 'string' THEN
            -- byte order, so that the result never depends on the database's collation
            RETURN CASE WHEN ((p_arg #>> '{}') COLLATE "C" > (p_target #>> '{}') COLLATE "C") = (p_op = 'max')
                        THEN p_arg ELSE p_target END;
        END IF;
    WHEN 'add' THEN
        IF v_type IS NULL OR v_type = 'array' THEN
            RETURN coalesce(p_target, '[]') || coalesce((
                SELECT jsonb_agg(e ORDER BY i) FROM (
                    SELECT DISTINCT ON (e) e, i FROM jsonb_array_elements(p_arg) WITH ORDINALITY a(e, i)
                     WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(coalesce(p_target, '[]')) t(x) WHERE x = e)
                     ORDER BY e, i) d), '[]');
        END IF;
    WHEN 'remove' THEN
        IF v_type IS NULL THEN
            RETURN NULL;
        ELSIF v_type = 'array' THEN
            RETURN coalesce((
                SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(p_target) WITH ORDINALITY t(x, i)
                 WHERE NOT EXISTS (SELECT FROM jsonb_array_elements(p_arg) r(e) WHERE e = x)), '[]');
        END IF;
    WHEN 'push' THEN
        IF v_type IS NULL OR v_type = 'array' THEN
            v_each := coalesce(p_target, '[]') || (p_arg -> '$each');
            IF jsonb_typeof(p_arg -> '$slice') = 'number' THEN
                v_slice := (p_arg ->> '$slice')::int;
                v_each := coalesce((
                    SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(v_each) WITH ORDINALITY t(x, i)
                     WHERE CASE WHEN v_slice < 0 THEN i > jsonb_array_length(v_each) + v_slice
                                ELSE i <= v_slice END), '[]');
            END IF;
            RETURN v_each;
        END IF;
    END CASE;

    RAISE EXCEPTION USING ERRCODE = 'SM002',
        MESSAGE = format('$%s at "%s" cannot apply to %s (%s)', p_op, p_at, v_type,
            CASE p_op WHEN 'inc' THEN 'needs a number'
                      WHEN 'max' THEN 'needs a value of the operand''s type: number or string'
                      WHEN 'min' THEN 'needs a value of the operand''s type: number or string'
                      ELSE 'needs an array' END),
        DETAIL = jsonb_build_object('path', p_at, 'op', '$' || p_op, 'found', v_type)::text;
END;
$$;

-- ===== sql/050_check_id.sql
-- sms.check_id(name, value): identifiers (tenant, fsa, actor, lineage, trace ids, …) are 1 to 128
-- bytes of text without control characters, and without invisible or direction-changing ones
-- (zero-width spaces and joiners, soft hyphens, bidirectional marks and overrides, the byte-order
-- mark), which would make two ids look alike. Ids that are segments of URL paths (tenant_id,
-- fsa_id, task_id, lineage_id, agent) may not hold "/" (agents may: their route takes the rest of
-- the path), nor be "." or "..", which URL normalisation would remove. NULL passes (optional ids).
-- Raises SM007. sms.id_ok says the same without raising.
CREATE OR REPLACE FUNCTION sms.id_ok(p_name text, p_value text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- one expression, which the planner inlines into its callers' (no call on the write path)
    SELECT p_value IS NULL OR NOT (
        p_value = '' OR octet_length(p_value) > 128
        OR p_value ~ '[[:cntrl:]\u0080-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]'
        OR (p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id', 'agent') AND p_value IN ('.', '..'))
        OR (p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id') AND strpos(p_value, '/') > 0));
$$;

CREATE OR REPLACE FUNCTION sms.check_id(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_segment boolean := p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id', 'agent');
BEGIN
    IF NOT sms.id_ok(p_name, p_value) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM007',
            MESSAGE = format('%s must be 1 to 128 bytes without control, invisible or bidirectional characters%s',
                             p_name, CASE WHEN p_name = 'agent' THEN ', and not . or ..'
                                          WHEN v_segment THEN ', without "/", and not . or ..' ELSE '' END),
            DETAIL = jsonb_build_object('field', p_name)::text;
    END IF;
END;
$$;

-- ===== sql/060_write_op.sql
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

-- ===== sql/063_tally.sql
-- sms.tally(counts, status, by): counts by status ({"OPEN": 3, …}) with one status's count moved
-- by `by`; a count that reaches 0 is dropped, and a NULL status changes nothing. STABLE, as
-- to_jsonb is, so that the planner inlines it (an IMMUTABLE function it cannot, its body being
-- more volatile: each call ran as a statement of its own).
CREATE OR REPLACE FUNCTION sms.tally(p_counts jsonb, p_status text, p_by bigint) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_status IS NULL THEN p_counts
                WHEN coalesce((p_counts ->> p_status)::bigint, 0) + p_by = 0 THEN p_counts - p_status
                ELSE jsonb_set(p_counts, ARRAY[p_status], to_jsonb(coalesce((p_counts ->> p_status)::bigint, 0) + p_by))
           END;
$$;

-- ===== sql/066_policy_targets.sql
-- sms.policy_targets(tenant, fsa, ops, aml_level): the policy rules that concern a delta's ops,
-- each with how the rule's glob relates to the op's path (sms.policy_relation); NULL when none
-- does. The state's own rules and the tenant's defaults (fsa_id ''), a state's rule on a path
-- replacing the defaults on that path; AML rules only when the level is below theirs (no level
-- counts as 0). A rule above an op's path that only says `required` is left out: a change below a
-- value never removes it.
-- Cost: sms.apply_ops calls it only for a state that has rules, its own or its tenant's (most have
-- none: one key probe tells). Then one key search per op, (state or defaults) and prefix of its
-- path, plus one for the rules below it, however many rules there are on other paths; rules whose
-- path starts with a glob (anchor '') are looked at for every op. Each search is a LATERAL
-- subquery kept apart (OFFSET 0), so that no estimate — of a table without statistics, say —
-- turns it into a scan of the tenant's rules; and the searches are planned once per session, not
-- per delta (a generic plan), and never compiled (JIT): their estimates are high for what they
-- read.
CREATE OR REPLACE FUNCTION sms.policy_targets(p_tenant_id text, p_fsa_id text, p_ops jsonb, p_aml_level integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
BEGIN
    RETURN (
        WITH ops AS (
            -- each op's path and its prefixes, as dotted paths (sms.format_path, written out: a
            -- function call per prefix costs more than the whole search)
            SELECT o.n, p.keys AS op_keys, p.prefixes[cardinality(p.prefixes)] AS dotted, p.prefixes
              FROM jsonb_array_elements(p_ops) WITH ORDINALITY o(op, n),
                   LATERAL (SELECT array_agg(k ORDER BY i) AS keys,
                                   '{""}' || array_agg(prefix COLLATE "C" ORDER BY i) AS prefixes
                              FROM (SELECT k, i, string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.')
                                                 OVER (ORDER BY i) AS prefix
                                      FROM jsonb_array_elements_text(o.op -> 'path') WITH ORDINALITY e(k, i)) e) p
        ), candidates AS (
            SELECT ops.n, ops.op_keys, r.*
              FROM ops, unnest(ARRAY['', p_fsa_id]) f(fsa_id), unnest(ops.prefixes) a(anchor),
                   LATERAL (SELECT * FROM sms.policies r
                             WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id AND r.anchor = a.anchor
                            OFFSET 0) r
            UNION ALL
            SELECT ops.n, ops.op_keys, r.*
              FROM ops, unnest(ARRAY['', p_fsa_id]) f(fsa_id),
                   LATERAL (SELECT * FROM sms.policies r
                             WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id
                               AND r.anchor > ops.dotted || '.' AND r.anchor < ops.dotted || '/'
                            OFFSET 0) r
        )
        SELECT jsonb_agg(jsonb_build_object('rule', c.rule, 'relation', rel.relation, 'base', to_jsonb(rel.base),
                                            'rest', to_jsonb(rel.rest))
                         ORDER BY c.n, c.fsa_id, c.rule_no)
          FROM candidates c, LATERAL sms.policy_relation(c.keys, c.op_keys) rel
         WHERE rel.relation IS NOT NULL
           AND NOT (rel.relation = 'above'
                    AND NOT c.rule ?| ARRAY['min', 'max', 'enum', 'type', 'immutable', 'max_change'])
           AND (NOT c.rule ? 'aml_below' OR coalesce(p_aml_level, 0) < (c.rule ->> 'aml_below')::integer)
           -- a state's own rule on a path replaces the defaults on it (it has the same anchor)
           AND (c.fsa_id <> '' OR NOT EXISTS (SELECT FROM candidates s
                                               WHERE s.n = c.n AND s.fsa_id <> '' AND s.path = c.path))
    );
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
--   * serial per state: sms.lock_state serialises writers (sms.apply_deltas holds the lock for a
--     whole batch), versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and the preconditions are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * a type mismatch (SM002) applies nothing;
--   * published (sms.publish): a place in the tenant's feed and exactly one NOTIFY on channel
--     sms_changes with ids only (< 1 KB, unless the setting sms.notify is 'off') — or, inside
--     sms.apply_deltas (the setting sms.batch_at), one for the whole batch at its end;
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
    v_keys        text[];
    v_batch_at    bigint := nullif(current_setting('sms.batch_at', true), '')::bigint;
    v_setting     text;  -- what set_config answers
BEGIN
    -- in a batch, whose caller holds the state's lock, the version its last write made (the setting
    -- sms.batch_at, which a write that fails takes back with its subtransaction); else the lock. A
    -- state's first version makes its header row (sms.lock_state), in a batch too.
    v_version := CASE WHEN v_batch_at > 0 THEN v_batch_at ELSE sms.lock_state(p_tenant_id, p_fsa_id) END;

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
    FOR v_op, v_keys IN SELECT value, ARRAY(SELECT jsonb_array_elements_text(value -> 'path'))
                          FROM jsonb_array_elements(v_ops) LOOP
        v_written := sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op, v_keys);  -- an expression, not a query
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

    IF v_batch_at IS NOT NULL THEN  -- a batch publishes once, at its end
        v_setting := set_config('sms.batch_at', v_version::text, true);  -- an expression, not a query
    ELSE
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

-- ===== sql/069_apply_ops.sql
-- sms.record_refusal(...): records in sms.refusals a delta a policy refused (the SM011 that
-- sms.append_delta raised: its message and detail) and returns the refusal as sms.apply_ops answers
-- it. For sms.apply_ops, and for sms.apply_deltas when a refusal rolls back a whole batch.
CREATE OR REPLACE FUNCTION sms.record_refusal(
    p_tenant_id  text,
    p_fsa_id     text,
    p_ops        jsonb,
    p_actor      text,
    p_lineage_id text,
    p_delta_id   uuid,
    p_meta       jsonb,
    p_trace_id   text,
    p_message    text,
    p_detail     jsonb
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_refusal sms.refusals;
BEGIN
    INSERT INTO sms.refusals (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, aml_level, meta, ops,
                              violations)
    VALUES (p_tenant_id, p_fsa_id, (p_detail ->> 'current_version')::bigint, p_delta_id, p_actor, p_lineage_id,
            p_trace_id, sms.aml_level(p_meta), coalesce(p_meta, '{}'), p_ops, p_detail -> 'violations')
    RETURNING * INTO v_refusal;
    RETURN jsonb_build_object('success', false, 'refused', true, 'error', 'policy-violation', 'message', p_message,
                              'violations', v_refusal.violations, 'version', v_refusal.version,
                              'refusal_id', v_refusal.refusal_id);
END;
$$;

-- sms.apply_ops(...): applies normalised ops and preconditions (see sms.normalize_delta) to the
-- state (tenant_id, fsa_id); the engine behind sms.apply_delta, sms.replace_state, sms.rollback and
-- sms.heartbeat, and what a replay of the log calls with each logged row's ops. Ops are trusted to
-- be normalised (as in sms.deltas.ops); use sms.apply_delta for anything else. Returns
-- {"success": true, "version", "delta_id", "changed": [paths], "duplicate"}, with every guarantee
-- of sms.append_delta (atomic, serial per state, gap-free versions, idempotent, one NOTIFY).
-- Policies (DESIGN §10): the rules that concern the ops' paths (sms.policy_targets, at the AML
-- level in meta.aml_level) are checked on the values the delta produces, in the same transaction.
-- A delta that breaks one is undone (a savepoint, taken only when some rule concerns it), uses no
-- version, is not logged and notifies nobody; it is recorded in sms.refusals, and the answer is
-- {"success": false, "refused": true, "error": "policy-violation", "message", "violations",
-- "version", "refusal_id"} — returned, not raised, so that the record of the refusal commits.
CREATE OR REPLACE FUNCTION sms.apply_ops(
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
    p_parent_id        text   DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_targets jsonb;
    v_message text;
    v_detail  jsonb;
BEGIN
    IF NOT (sms.id_ok('tenant_id', coalesce(p_tenant_id, '')) AND sms.id_ok('fsa_id', coalesce(p_fsa_id, ''))
            AND sms.id_ok('actor', p_actor) AND sms.id_ok('lineage_id', p_lineage_id)
            AND sms.id_ok('trace_id', p_trace_id) AND sms.id_ok('parent_id', p_parent_id)) THEN
        -- an expression for ids that pass (all, nearly always); sms.check_id raises for the first bad one
        PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
                sms.check_id('actor', p_actor), sms.check_id('lineage_id', p_lineage_id),
                sms.check_id('trace_id', p_trace_id), sms.check_id('parent_id', p_parent_id);
    END IF;
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        PERFORM sms.raise_invalid('meta', 'meta must be a JSON object');
    END IF;

    -- no rule for the state or its tenant (most states): one probe, and no search
    IF EXISTS (SELECT FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id IN (p_fsa_id, '')) THEN
        v_targets := sms.policy_targets(p_tenant_id, p_fsa_id, p_ops, sms.aml_level(p_meta));
    END IF;
    IF v_targets IS NULL THEN
        RETURN sms.append_delta(p_tenant_id, p_fsa_id, p_ops, p_expect, p_actor, p_lineage_id, p_delta_id,
                                p_expected_version, p_meta, p_trace_id, p_parent_id);
    END IF;
    BEGIN
        RETURN sms.append_delta(p_tenant_id, p_fsa_id, p_ops, p_expect, p_actor, p_lineage_id, p_delta_id,
                                p_expected_version, p_meta, p_trace_id, p_parent_id, v_targets);
    EXCEPTION WHEN SQLSTATE 'SM011' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
    END;
    RETURN sms.record_refusal(p_tenant_id, p_fsa_id, p_ops, p_actor, p_lineage_id, p_delta_id, p_meta, p_trace_id,
                              v_message, v_detail);
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
    v_at      bigint;
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
    -- collection's marker row once for all of them (sms.write_op); and the state's version, which
    -- each write that succeeds moves on (sms.append_delta reads it rather than the state's row)
    v_at := sms.current_version(p_tenant_id, p_fsa_id);
    PERFORM set_config('sms.batch', (v_at + 1)::text, true), set_config('sms.batch_at', v_at::text, true);

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

    PERFORM set_config('sms.batch', coalesce(v_batch, ''), true), set_config('sms.batch_at', '', true);
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
