-- Frozen copy of what revision 0010 installs (the sql/ files as they were), run as one script.

-- ===== sql/005_limit_setting.sql
-- sms.limit_setting(name, default): a limit on input, from the setting sms.<name> (the service
-- sets sms.max_depth and sms.max_key_length from SMS_MAX_DEPTH and SMS_MAX_KEY_LENGTH), else the
-- default, so that SQL callers meet the same limits as the API.
CREATE OR REPLACE FUNCTION sms.limit_setting(p_name text, p_default integer) RETURNS integer
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(nullif(current_setting('sms.' || p_name, true), '')::integer, p_default);
$$;

-- ===== sql/030_normalize_delta.sql
-- sms.normalize_delta(delta): validates a delta in its wire format (DESIGN §4.1) and returns it
-- normalised:
--   {"ops":    [{"path": [keys], "op": "set|unset|inc|max|min|add|remove|push|merge",
--                "value": operand}, ...],
--    "expect": [{"path": [keys], "value": v} | {"path": [keys], "exists": bool}, ...]}
-- Aliases are resolved ($addToSet -> add, $pull -> remove), a plain value becomes "set", $push
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
    v_clash  record;
BEGIN
    IF p_delta IS NULL OR jsonb_typeof(p_delta) <> 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM001',
            MESSAGE = format('a delta must be a JSON object of paths, not %s',
                             coalesce(jsonb_typeof(p_delta), 'nothing'));
    END IF;

    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_delta) LOOP
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
    v_depth  integer := sms.limit_setting('max_depth', 32);
    v_length integer := sms.limit_setting('max_key_length', 512);
    v_key    text;
BEGIN
    PERFORM sms.check_number(p_path, p_value);
    IF jsonb_typeof(p_value) NOT IN ('object', 'array') THEN
        RETURN;
    END IF;
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
            PERFORM sms.check_number(p_at, v_each);  -- a sum may leave the range its terms kept
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
-- Raises SM007.
CREATE OR REPLACE FUNCTION sms.check_id(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_segment boolean := p_name IN ('tenant_id', 'fsa_id', 'task_id', 'lineage_id', 'agent');
BEGIN
    IF p_value = '' OR octet_length(p_value) > 128
       OR p_value ~ '[[:cntrl:]\u0080-\u009f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]'
       OR (v_segment AND p_value IN ('.', '..'))
       OR (v_segment AND p_name <> 'agent' AND strpos(p_value, '/') > 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM007',
            MESSAGE = format('%s must be 1 to 128 bytes without control, invisible or bidirectional characters%s',
                             p_name, CASE WHEN p_name = 'agent' THEN ', and not . or ..'
                                          WHEN v_segment THEN ', without "/", and not . or ..' ELSE '' END),
            DETAIL = jsonb_build_object('field', p_name)::text;
    END IF;
END;
$$;

-- ===== sql/071_replace_state.sql
-- sms.replace_state(...): replaces the whole state with p_document, logged as one delta that sets
-- each of its top-level keys and unsets every other one; its keys and values are checked as a
-- delta's are (sms.check_value). Same arguments, result and guarantees as sms.apply_delta. The
-- state is locked before its keys are read, so a concurrent writer can't slip a key past the
-- replacement.
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
    v_ops jsonb;
BEGIN
    IF p_document IS NULL OR jsonb_typeof(p_document) <> 'object' THEN
        PERFORM sms.raise_invalid('', format('a state must be a JSON object, not %s',
                                             coalesce(jsonb_typeof(p_document), 'nothing')));
    END IF;
    IF EXISTS (SELECT FROM jsonb_object_keys(p_document) k WHERE left(k, 1) = '$') THEN
        PERFORM sms.raise_invalid('', 'top-level keys of a state may not start with $ (they are reserved in deltas)');
    END IF;
    PERFORM CASE WHEN length(key) > sms.limit_setting('max_key_length', 512)
                 THEN sms.raise_invalid(left(key, 100), format('a key is %s characters long; at most %s are allowed',
                                                               length(key), sms.limit_setting('max_key_length', 512)))
            END, sms.check_value(key, value)
       FROM jsonb_each(p_document);
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    PERFORM sms.lock_state(p_tenant_id, p_fsa_id);
    -- a retry: the ops logged the first time, which apply_ops answers as a duplicate
    SELECT ops INTO v_ops FROM sms.deltas
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND delta_id = p_delta_id;
    IF NOT FOUND THEN
        -- ops rather than a wire delta: any key, even "", is a valid top-level key here
        SELECT jsonb_agg(jsonb_build_object('path', jsonb_build_array(key), 'op', op, 'value', value) ORDER BY key)
          INTO v_ops FROM (
            SELECT key, 'set' AS op, value FROM jsonb_each(p_document)
            UNION ALL
            SELECT collection, 'unset', 'true'::jsonb FROM sms.entries
             WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND NOT is_member
               AND NOT p_document ? collection
        ) d;
    END IF;
    IF v_ops IS NULL THEN
        -- {} over an empty state changes nothing, so nothing is logged
        RETURN jsonb_build_object('success', true, 'delta_id', NULL, 'changed', '[]'::jsonb, 'duplicate', false,
            'version', (SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id));
    END IF;
    RETURN sms.apply_ops(p_tenant_id, p_fsa_id, v_ops, '[]', p_actor, p_lineage_id, p_delta_id,
                         p_expected_version, p_meta, p_trace_id, p_parent_id);
END;
$$;
