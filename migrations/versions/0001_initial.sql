-- ===== sql/001_schema.sql
-- Schema sms: every object of the State Memory Service lives here.
CREATE SCHEMA IF NOT EXISTS sms;

-- ===== sql/010_states.sql
-- sms.states: one small header row per (tenant_id, fsa_id).
-- apply_delta locks this row to serialise the writers of one state; `version` is the number of
-- deltas applied (gap-free), the counters describe sms.entries without scanning it.
CREATE TABLE sms.states (
    tenant_id     text        NOT NULL,
    fsa_id        text        NOT NULL,
    version       bigint      NOT NULL DEFAULT 0,
    entry_count   bigint      NOT NULL DEFAULT 0,
    content_bytes bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id)
);

-- ===== sql/011_entries.sql
-- sms.entries: a state's content, one row per entry, so that a merge rewrites only the entries it
-- touches and never the whole document.
--   * a top-level key whose value is not an object: one row (is_member = false) holding the value;
--   * a top-level object: a marker row (is_member = false, value '{}') so that {} round-trips,
--     plus one row per member (is_member = true, member = the member's key).
-- Keys use COLLATE "C" so that key-prefix globs are primary-key range scans.
-- `version` is the state version that last changed the entry.
CREATE TABLE sms.entries (
    tenant_id  text                NOT NULL,
    fsa_id     text                NOT NULL,
    collection text COLLATE "C"    NOT NULL,
    is_member  boolean             NOT NULL,
    member     text COLLATE "C"    NOT NULL DEFAULT '',
    value      jsonb               NOT NULL,
    version    bigint              NOT NULL,
    PRIMARY KEY (tenant_id, fsa_id, collection, is_member, member)
);

-- ===== sql/012_deltas.sql
-- sms.deltas: the append-only log of every applied delta; replaying it from version 0 reproduces
-- the state exactly (the entries are its materialisation).
--   version      per state, gap-free: 1, 2, 3, ...
--   delta_id     idempotency key, unique per state
--   ops          the normalised delta: [{"path": [...], "op": "...", "value": ...}, ...]
--   paths        the dotted paths the delta addressed; collections: their top-level keys
--   meta         request metadata kept as sent (pillar, aml_level, ...)
CREATE TABLE sms.deltas (
    tenant_id   text        NOT NULL,
    fsa_id      text        NOT NULL,
    version     bigint      NOT NULL,
    delta_id    uuid        NOT NULL,
    actor       text,
    lineage_id  text,
    trace_id    text,
    parent_id   text,
    meta        jsonb       NOT NULL DEFAULT '{}',
    ops         jsonb       NOT NULL,
    paths       text[]      NOT NULL,
    collections text[]      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, version),
    UNIQUE (tenant_id, fsa_id, delta_id)
);

-- ===== sql/013_deltas_append_only.sql
-- sms.refuse_log_change(): the log is append-only. UPDATE, DELETE and TRUNCATE of sms.deltas are
-- refused for everyone, also for SQL run directly from psql.
CREATE OR REPLACE FUNCTION sms.refuse_log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        ERRCODE = 'SM008',
        MESSAGE = format('sms.deltas is append-only: %s is not allowed', TG_OP);
END;
$$;

CREATE TRIGGER deltas_append_only
    BEFORE UPDATE OR DELETE ON sms.deltas
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER deltas_no_truncate
    BEFORE TRUNCATE ON sms.deltas
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();

-- ===== sql/020_parse_path.sql
-- sms.parse_path(path): a dotted delta path into its keys. `\.` is a literal dot and `\\` a
-- literal backslash; every key must be non-empty. Raises SM001 (invalid delta) naming the path.
CREATE OR REPLACE FUNCTION sms.parse_path(p_path text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_keys text[];
BEGIN
    IF p_path !~ '^(?:[^.\\]|\\[.\\])+(?:\.(?:[^.\\]|\\[.\\])+)*$' THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SM001',
            MESSAGE = format('invalid path "%s": keys are separated by single dots, must not be '
                             'empty, and only \. and \\ may be escaped', p_path),
            DETAIL = jsonb_build_object('path', p_path)::text;
    END IF;
    SELECT array_agg(regexp_replace(m[1], '\\(.)', '\1', 'g') ORDER BY n)
      INTO v_keys
      FROM regexp_matches(p_path, '((?:[^.\\]|\\[.\\])+)', 'g') WITH ORDINALITY AS t(m, n);
    IF cardinality(v_keys) > 64 THEN
        RAISE EXCEPTION USING
            ERRCODE = 'SM006',
            MESSAGE = format('path "%s" is %s keys deep; at most 64 are allowed',
                             left(p_path, 200), cardinality(v_keys)),
            DETAIL = jsonb_build_object('path', left(p_path, 200))::text;
    END IF;
    RETURN v_keys;
END;
$$;

-- ===== sql/021_format_path.sql
-- sms.format_path(keys): the dotted path of a key array; the inverse of sms.parse_path.
CREATE OR REPLACE FUNCTION sms.format_path(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.' ORDER BY n)
      FROM unnest(p_keys) WITH ORDINALITY AS t(k, n);
$$;

-- ===== sql/030_normalize_delta.sql
-- sms.normalize_delta(delta): validates a delta in its wire format (DESIGN §4.1) and returns it
-- normalised:
--   {"ops":    [{"path": [keys], "op": "set|unset|inc|max|min|add|remove|push|merge",
--                "value": operand}, ...],
--    "expect": [{"path": [keys], "value": v} | {"path": [keys], "exists": bool}, ...]}
-- Aliases are resolved ($addToSet -> add, $pull -> remove), a plain value becomes "set", $push
-- operands become {"$each": [...], "$slice": n|null} and $add/$remove operands arrays.
-- Anything malformed raises SM001 naming the offending path; nothing is read or written.
-- Paths may not overlap (one a prefix of another), so the order of ops never matters.
CREATE OR REPLACE FUNCTION sms.normalize_delta(p_delta jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key    text;
    v_value  jsonb;
    v_path   text[];
    v_op     text;
    v_arg    jsonb;
    v_ops    jsonb := '[]';
    v_expect jsonb := '[]';
    v_clash  record;
BEGIN
    IF p_delta IS NULL OR jsonb_typeof(p_delta) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = format('a delta must be a JSON object of paths, not %s',
                             coalesce(jsonb_typeof(p_delta), 'nothing'));
    END IF;

    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_delta) LOOP
        IF v_key = '$expect' THEN
            v_expect := sms.normalize_expect(v_value);
            CONTINUE;
        END IF;
        IF left(v_key, 1) = '$' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM001',
                MESSAGE = format('"%s" is not a path: top-level keys starting with $ are reserved '
                                 '(only $expect is defined)', v_key),
                DETAIL = jsonb_build_object('path', v_key)::text;
        END IF;
        v_path := sms.parse_path(v_key);

        IF jsonb_typeof(v_value) = 'object' AND v_value <> '{}'
           AND NOT EXISTS (SELECT FROM jsonb_object_keys(v_value) k WHERE left(k, 1) <> '$') THEN
            -- an operator object: exactly one $-key
            IF (SELECT count(*) FROM jsonb_object_keys(v_value)) > 1 THEN
                RAISE EXCEPTION USING ERRCODE = 'SM001',
                    MESSAGE = format('"%s" has several operators (%s); give one operator per path',
                                     v_key, (SELECT string_agg(k, ', ') FROM jsonb_object_keys(v_value) k)),
                    DETAIL = jsonb_build_object('path', v_key)::text;
            END IF;
            SELECT key, value INTO v_op, v_arg FROM jsonb_each(v_value);
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
            PERFORM sms.check_literal(v_key, v_value);
            v_op := 'set';
            v_arg := v_value;
        END IF;
        v_ops := v_ops || jsonb_build_object('path', to_jsonb(v_path), 'op', v_op, 'value', v_arg);
    END LOOP;

    IF v_ops = '[]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = 'the delta changes nothing: give at least one path';
    END IF;

    -- Overlapping paths: in sorted order a path's prefix-sibling sorts right before it.
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

    RETURN jsonb_build_object('ops', v_ops, 'expect', v_expect);
END;
$$;

-- ===== sql/031_raise_invalid.sql
-- sms.raise_invalid(path, message): raises SM001 (invalid delta) with the path in DETAIL; usable
-- inside expressions (it never returns).
CREATE OR REPLACE FUNCTION sms.raise_invalid(p_path text, p_message text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'SM001', MESSAGE = p_message,
        DETAIL = jsonb_build_object('path', p_path)::text;
END;
$$;

-- ===== sql/032_check_literal.sql
-- sms.check_literal(path, value): a plain value may not hold keys starting with $ at any depth,
-- because a nested {"$inc": 1} would be stored literally where an operator was meant. Storing such
-- keys is explicit: {"$set": ...}.
CREATE OR REPLACE FUNCTION sms.check_literal(p_path text, p_value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF jsonb_typeof(p_value) IN ('object', 'array')
       AND jsonb_path_exists(p_value, 'strict $.** ? (@.type() == "object").keyvalue() ? (@.key starts with "$")') THEN
        PERFORM sms.raise_invalid(p_path, format(
            'the value at "%s" holds keys starting with $ (operators work only at the top of a '
            'path''s value); use {"$set": ...} to store such keys literally', p_path));
    END IF;
END;
$$;

-- ===== sql/033_normalize_operand.sql
-- sms.normalize_operand(path, op, operand): checks an operator's operand and returns its normal
-- form: $add/$remove take arrays (a single value means [value]); $push becomes
-- {"$each": [...], "$slice": n|null}. Raises SM001 naming the path.
CREATE OR REPLACE FUNCTION sms.normalize_operand(p_path text, p_op text, p_arg jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_type text := jsonb_typeof(p_arg);
    v_slice jsonb;
BEGIN
    CASE p_op
    WHEN 'set' THEN
        RETURN p_arg;
    WHEN 'unset' THEN
        IF p_arg <> 'true' THEN
            PERFORM sms.raise_invalid(p_path, format('$unset at "%s" takes true', p_path));
        END IF;
    WHEN 'inc' THEN
        IF v_type <> 'number' THEN
            PERFORM sms.raise_invalid(p_path, format('$inc at "%s" takes a number, not %s', p_path, v_type));
        END IF;
    WHEN 'max', 'min' THEN
        IF v_type NOT IN ('number', 'string') THEN
            PERFORM sms.raise_invalid(p_path, format('$%s at "%s" takes a number or a string, not %s',
                                                     p_op, p_path, v_type));
        END IF;
    WHEN 'add', 'remove' THEN
        RETURN CASE WHEN v_type = 'array' THEN p_arg ELSE jsonb_build_array(p_arg) END;
    WHEN 'push' THEN
        IF v_type = 'object' AND p_arg ? '$each' THEN
            IF EXISTS (SELECT FROM jsonb_object_keys(p_arg) k WHERE k NOT IN ('$each', '$slice')) THEN
                PERFORM sms.raise_invalid(p_path, format('$push at "%s" takes {"$each": [...], "$slice": n} and nothing else', p_path));
            END IF;
            IF jsonb_typeof(p_arg -> '$each') <> 'array' THEN
                PERFORM sms.raise_invalid(p_path, format('$each at "%s" takes an array', p_path));
            END IF;
            v_slice := nullif(p_arg -> '$slice', 'null');
            IF v_slice IS NOT NULL AND (jsonb_typeof(v_slice) <> 'number'
                                        OR (v_slice #>> '{}')::numeric <> trunc((v_slice #>> '{}')::numeric)
                                        OR abs((v_slice #>> '{}')::numeric) > 1000000) THEN
                PERFORM sms.raise_invalid(p_path, format('$slice at "%s" takes an integer (-N keeps the last N)', p_path));
            END IF;
            RETURN jsonb_build_object('$each', p_arg -> '$each', '$slice', coalesce(v_slice, 'null'));
        END IF;
        RETURN jsonb_build_object('$each', jsonb_build_array(p_arg), '$slice', 'null'::jsonb);
    WHEN 'merge' THEN
        IF v_type <> 'object' THEN
            PERFORM sms.raise_invalid(p_path, format('$merge at "%s" takes an object, not %s', p_path, v_type));
        END IF;
    END CASE;
    RETURN p_arg;
END;
$$;

-- ===== sql/034_normalize_expect.sql
-- sms.normalize_expect(expect): the $expect map {"path": value | {"$exists": bool}} as a list of
-- preconditions [{"path": [keys], "value": v} | {"path": [keys], "exists": bool}].
CREATE OR REPLACE FUNCTION sms.normalize_expect(p_expect jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_value jsonb;
    v_out   jsonb := '[]';
BEGIN
    IF jsonb_typeof(p_expect) <> 'object' THEN
        PERFORM sms.raise_invalid('$expect', '$expect takes an object of {"path": expected value}');
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_expect) LOOP
        IF jsonb_typeof(v_value) = 'object' AND EXISTS (SELECT FROM jsonb_object_keys(v_value) k WHERE left(k, 1) = '$') THEN
            IF (SELECT array_agg(k) FROM jsonb_object_keys(v_value) k) <> ARRAY['$exists']
               OR jsonb_typeof(v_value -> '$exists') <> 'boolean' THEN
                PERFORM sms.raise_invalid(v_key, format('$expect at "%s" takes a value or {"$exists": true|false}', v_key));
            END IF;
            v_out := v_out || jsonb_build_object('path', to_jsonb(sms.parse_path(v_key)), 'exists', v_value -> '$exists');
        ELSE
            v_out := v_out || jsonb_build_object('path', to_jsonb(sms.parse_path(v_key)), 'value', v_value);
        END IF;
    END LOOP;
    RETURN v_out;
END;
$$;

-- ===== sql/035_ops_to_delta.sql
-- sms.ops_to_delta(ops): the wire-format delta of a list of normalised ops (sms.deltas.ops), so
-- that the log can be replayed through sms.apply_delta: normalize_delta(ops_to_delta(ops)) gives
-- back the same ops.
CREATE OR REPLACE FUNCTION sms.ops_to_delta(p_ops jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(
               sms.format_path(ARRAY(SELECT jsonb_array_elements_text(o -> 'path'))),
               jsonb_build_object('$' || (o ->> 'op'), o -> 'value')), '{}')
      FROM jsonb_array_elements(p_ops) o;
$$;

-- ===== sql/040_merge_patch.sql
-- sms.merge_patch(target, patch): RFC 7396 JSON Merge Patch. Objects merge key by key, null
-- removes a key, anything else replaces. NULL target means "absent". Cost ∝ the patch's size.
CREATE OR REPLACE FUNCTION sms.merge_patch(p_target jsonb, p_patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_value jsonb;
BEGIN
    IF jsonb_typeof(p_patch) <> 'object' THEN
        RETURN p_patch;
    END IF;
    IF p_target IS NULL OR jsonb_typeof(p_target) <> 'object' THEN
        p_target := '{}';
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_patch) LOOP
        IF v_value = 'null' THEN
            p_target := p_target - v_key;
        ELSE
            p_target := p_target || jsonb_build_object(v_key, sms.merge_patch(p_target -> v_key, v_value));
        END IF;
    END LOOP;
    RETURN p_target;
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
            RETURN to_jsonb(p_target::numeric + p_arg::numeric);
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
-- sms.check_id(name, value): identifiers (tenant, fsa, actor, lineage, trace ids) are 1 to 128
-- bytes of text without control characters; NULL passes (optional ids). Raises SM007.
CREATE OR REPLACE FUNCTION sms.check_id(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF p_value = '' OR octet_length(p_value) > 128 OR p_value ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM007',
            MESSAGE = format('%s must be 1 to 128 bytes without control characters', p_name),
            DETAIL = jsonb_build_object('field', p_name)::text;
    END IF;
END;
$$;

-- ===== sql/051_collection_value.sql
-- sms.collection_value(tenant, fsa, collection): a top-level object assembled from its members.
CREATE OR REPLACE FUNCTION sms.collection_value(p_tenant_id text, p_fsa_id text, p_collection text)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(member, value), '{}')
      FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_collection AND is_member;
$$;

-- ===== sql/052_read_path.sql
-- sms.read_path(tenant, fsa, keys): the current value at a path, NULL when it does not exist.
-- Reads one or two entries (a whole collection only when the path is the collection itself).
CREATE OR REPLACE FUNCTION sms.read_path(p_tenant_id text, p_fsa_id text, p_keys text[])
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_top    jsonb;
    v_member jsonb;
BEGIN
    SELECT value INTO v_top FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1] AND NOT is_member;
    IF v_top IS NULL OR jsonb_typeof(v_top) <> 'object' THEN
        RETURN v_top #> p_keys[2:];
    ELSIF cardinality(p_keys) = 1 THEN
        RETURN sms.collection_value(p_tenant_id, p_fsa_id, p_keys[1]);
    END IF;
    SELECT value INTO v_member FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = p_keys[1]
       AND is_member AND member = p_keys[2];
    RETURN v_member #> p_keys[3:];
END;
$$;

-- ===== sql/053_read_paths.sql
-- sms.read_paths(tenant, fsa, ops): {"dotted path": current value} for the paths of a list of
-- normalised ops or expectations; absent paths are left out. Used in conflict reports.
CREATE OR REPLACE FUNCTION sms.read_paths(p_tenant_id text, p_fsa_id text, p_items jsonb)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(sms.format_path(k), v) FILTER (WHERE v IS NOT NULL), '{}')
      FROM jsonb_array_elements(p_items) i,
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(i -> 'path'))) p(k),
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) v;
$$;

-- ===== sql/054_document.sql
-- sms.document(tenant, fsa): the full state as one JSON object ({} for a state never written),
-- assembled from its entries in one index scan. STABLE: inside one statement it reads the same
-- snapshot as the statement, so it agrees with a version read beside it.
CREATE OR REPLACE FUNCTION sms.document(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(collection,
               CASE WHEN jsonb_typeof(top) = 'object' THEN coalesce(members, '{}') ELSE top END), '{}')
      FROM (SELECT collection,
                   (array_agg(value) FILTER (WHERE NOT is_member))[1] AS top,
                   jsonb_object_agg(member, value) FILTER (WHERE is_member) AS members
              FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
             GROUP BY collection) c;
$$;

-- ===== sql/059_put_entry.sql
-- sms.put_entry(...): stores one entry's new value given its old one (NULL = absent): insert,
-- update, delete, or nothing when the value did not change. Returns the change in entry count
-- and content bytes.
CREATE OR REPLACE FUNCTION sms.put_entry(p_tenant_id text, p_fsa_id text, p_collection text,
                                         p_is_member boolean, p_member text, p_old jsonb, p_new jsonb,
                                         p_version bigint, OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
BEGIN
    entry_delta := 0;
    byte_delta := coalesce(pg_column_size(p_new), 0) - coalesce(pg_column_size(p_old), 0);
    IF p_new IS NOT DISTINCT FROM p_old THEN
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
END;
$$;

-- ===== sql/060_write_op.sql
-- sms.write_op(tenant, fsa, version, op): applies one normalised op to sms.entries, touching only
-- the entries on its path (cost ∝ the entry, never the state). Returns how the state's entry
-- count and content bytes changed. The caller (sms.apply_delta) holds the state's lock.
CREATE OR REPLACE FUNCTION sms.write_op(p_tenant_id text, p_fsa_id text, p_version bigint, p_op jsonb,
                                        OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
DECLARE
    v_keys text[] := ARRAY(SELECT jsonb_array_elements_text(p_op -> 'path'));
    v_op   text   := p_op ->> 'op';
    v_arg  jsonb  := p_op -> 'value';
    v_at   text   := sms.format_path(v_keys);
    v_top  jsonb;   -- the top-level row: NULL if absent, the marker '{}' if an object
    v_key  text;
    v_old  jsonb;
    v_new  jsonb;
BEGIN
    entry_delta := 0;
    byte_delta := 0;
    SELECT value INTO v_top FROM sms.entries
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1] AND NOT is_member;

    IF cardinality(v_keys) = 1 AND v_op IN ('set', 'unset') THEN
        -- replace or remove a whole top-level key
        WITH gone AS (
            DELETE FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
            RETURNING pg_column_size(value) AS size)
        SELECT -count(*), -coalesce(sum(size), 0) INTO entry_delta, byte_delta FROM gone;
        IF v_op = 'set' THEN
            WITH added AS (
                INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
                SELECT p_tenant_id, p_fsa_id, v_keys[1], false, '',
                       CASE WHEN jsonb_typeof(v_arg) = 'object' THEN '{}' ELSE v_arg END, p_version
                UNION ALL
                SELECT p_tenant_id, p_fsa_id, v_keys[1], true, key, value, p_version
                  FROM jsonb_each(CASE WHEN jsonb_typeof(v_arg) = 'object' THEN v_arg ELSE '{}' END)
                RETURNING pg_column_size(value) AS size)
            SELECT entry_delta + count(*), byte_delta + sum(size) INTO entry_delta, byte_delta FROM added;
        END IF;
        RETURN;
    END IF;

    IF cardinality(v_keys) = 1 AND v_op <> 'merge' THEN
        -- an operator on a top-level value; on an object marker apply_op raises the type mismatch
        v_new := sms.apply_op(v_top, '{}', v_op, v_arg, v_at);
        SELECT d.entry_delta, d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', v_top, v_new, p_version) d;
        RETURN;
    END IF;

    IF cardinality(v_keys) = 1 AND jsonb_typeof(v_top) <> 'object' THEN
        -- $merge replaces a value that is not an object (RFC 7396)
        SELECT d.entry_delta, d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], false, '', v_top, NULL, p_version) d;
        v_top := NULL;
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
        INSERT INTO sms.entries (tenant_id, fsa_id, collection, is_member, member, value, version)
        VALUES (p_tenant_id, p_fsa_id, v_keys[1], false, '', '{}', p_version);
        entry_delta := entry_delta + 1;
        byte_delta := byte_delta + pg_column_size('{}'::jsonb);
    END IF;

    -- $merge on a whole collection touches one member per key of the patch; any other op one member
    FOR v_key, v_arg IN
        SELECT key, value FROM jsonb_each(v_arg) WHERE cardinality(v_keys) = 1
        UNION ALL
        SELECT v_keys[2], v_arg WHERE cardinality(v_keys) > 1
    LOOP
        SELECT value INTO v_old FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_keys[1]
           AND is_member AND member = v_key;
        v_new := CASE WHEN cardinality(v_keys) = 1
                      THEN nullif(sms.merge_patch(v_old, v_arg), 'null')
                      ELSE sms.apply_op(v_old, v_keys[3:], v_op, v_arg, v_at) END;
        SELECT write_op.entry_delta + d.entry_delta, write_op.byte_delta + d.byte_delta INTO entry_delta, byte_delta
          FROM sms.put_entry(p_tenant_id, p_fsa_id, v_keys[1], true, v_key, v_old, v_new, p_version) d;
    END LOOP;
END;
$$;

-- ===== sql/070_apply_delta.sql
-- sms.apply_delta(...): applies one delta (DESIGN §4) to the state (tenant_id, fsa_id) in one
-- call and returns {"success": true, "version", "delta_id", "changed": [paths], "duplicate"}.
-- Guarantees:
--   * atomic: the entries, the log row and the NOTIFY commit together or not at all;
--   * serial per state: the header row is locked, versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and $expect are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * validation first: a malformed delta (SM001) or a type mismatch (SM002) applies nothing;
--   * exactly one NOTIFY on channel sms_changes with ids only (< 1 KB), unless the setting
--     sms.notify is 'off'.
CREATE OR REPLACE FUNCTION sms.apply_delta(
    p_tenant_id        text,
    p_fsa_id           text,
    p_delta            jsonb,
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
    v_delta       jsonb;
    v_ops         jsonb;
    v_version     bigint;
    v_prior       sms.deltas;
    v_failed      jsonb;
    v_op          jsonb;
    v_entries     bigint := 0;
    v_bytes       bigint := 0;
    v_paths       text[];
    v_collections text[];
    v_payload     text;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('lineage_id', p_lineage_id),
            sms.check_id('trace_id', p_trace_id), sms.check_id('parent_id', p_parent_id);
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        PERFORM sms.raise_invalid('meta', 'meta must be a JSON object');
    END IF;
    v_delta := sms.normalize_delta(p_delta);
    v_ops := v_delta -> 'ops';

    INSERT INTO sms.states (tenant_id, fsa_id) VALUES (p_tenant_id, p_fsa_id) ON CONFLICT DO NOTHING;
    SELECT version INTO v_version FROM sms.states
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id FOR UPDATE;

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

    SELECT jsonb_agg(sms.format_path(k)) INTO v_failed
      FROM jsonb_array_elements(v_delta -> 'expect') e,
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(e -> 'path'))) p(k),
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) cur
     WHERE CASE WHEN e ? 'exists' THEN (cur IS NOT NULL) <> (e ->> 'exists')::boolean
                ELSE cur IS DISTINCT FROM e -> 'value' END;
    IF v_failed IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SM004',
            MESSAGE = format('$expect failed at %s', (SELECT string_agg(format('"%s"', f), ', ')
                                                       FROM jsonb_array_elements_text(v_failed) f)),
            DETAIL = jsonb_build_object('current_version', v_version, 'failed', v_failed,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, v_delta -> 'expect'))::text;
    END IF;

    v_version := v_version + 1;
    FOR v_op IN SELECT value FROM jsonb_array_elements(v_ops) LOOP
        SELECT v_entries + w.entry_delta, v_bytes + w.byte_delta INTO v_entries, v_bytes
          FROM sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op) w;
    END LOOP;

    SELECT array_agg(sms.format_path(k) ORDER BY n), array_agg(DISTINCT k[1])
      INTO v_paths, v_collections
      FROM jsonb_array_elements(v_ops) WITH ORDINALITY o(op, n),
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(op -> 'path'))) p(k);

    INSERT INTO sms.deltas (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, parent_id,
                            meta, ops, paths, collections)
    VALUES (p_tenant_id, p_fsa_id, v_version, coalesce(p_delta_id, gen_random_uuid()), p_actor, p_lineage_id,
            p_trace_id, p_parent_id, coalesce(p_meta, '{}'), v_ops, v_paths, v_collections)
    RETURNING * INTO v_prior;

    UPDATE sms.states
       SET version = v_version, updated_at = now(),
           entry_count = entry_count + v_entries, content_bytes = content_bytes + v_bytes
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;

    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        v_payload := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                        'delta_id', v_prior.delta_id, 'actor', p_actor,
                                        'lineage_id', p_lineage_id, 'collections', to_jsonb(v_collections))::text;
        IF octet_length(v_payload) > 1000 THEN
            -- many or long collection names: send ids only; subscribers read the rest from the log
            v_payload := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                            'delta_id', v_prior.delta_id, 'truncated', true)::text;
        END IF;
        PERFORM pg_notify('sms_changes', v_payload);
    END IF;

    RETURN jsonb_build_object('success', true, 'version', v_version, 'delta_id', v_prior.delta_id,
                              'changed', to_jsonb(v_paths), 'duplicate', false);
END;
$$;

-- ===== sql/071_replace_state.sql
-- sms.replace_state(...): replaces the whole state with p_document, logged as one delta that sets
-- each of its top-level keys and unsets every other one. Same arguments, result and guarantees
-- as sms.apply_delta. The state is locked before its keys are read, so a concurrent writer can't
-- slip a key past the replacement.
CREATE OR REPLACE FUNCTION sms.replace_state(
    p_tenant_id        text,
    p_fsa_id           text,
    p_document         jsonb,
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
    v_delta jsonb;
BEGIN
    IF p_document IS NULL OR jsonb_typeof(p_document) <> 'object' THEN
        PERFORM sms.raise_invalid('', format('a state must be a JSON object, not %s',
                                             coalesce(jsonb_typeof(p_document), 'nothing')));
    END IF;
    IF EXISTS (SELECT FROM jsonb_object_keys(p_document) k WHERE left(k, 1) = '$') THEN
        PERFORM sms.raise_invalid('', 'top-level keys of a state may not start with $ (they are reserved in deltas)');
    END IF;
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    INSERT INTO sms.states (tenant_id, fsa_id) VALUES (p_tenant_id, p_fsa_id) ON CONFLICT DO NOTHING;
    PERFORM FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id FOR UPDATE;

    SELECT jsonb_object_agg(sms.format_path(ARRAY[key]), op) INTO v_delta FROM (
        SELECT key, jsonb_build_object('$set', value) AS op FROM jsonb_each(p_document)
        UNION ALL
        SELECT collection, '{"$unset": true}' FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND NOT is_member
           AND NOT p_document ? collection
    ) d;
    IF v_delta IS NULL THEN
        -- {} over an empty state changes nothing, so nothing is logged
        RETURN jsonb_build_object('success', true, 'delta_id', NULL, 'changed', '[]'::jsonb, 'duplicate', false,
            'version', (SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id));
    END IF;
    RETURN sms.apply_delta(p_tenant_id, p_fsa_id, v_delta, p_actor, p_lineage_id, p_delta_id,
                           p_expected_version, p_meta, p_trace_id, p_parent_id);
END;
$$;

