-- Frozen copy of what revision 0011 installs (the sql/ files as they were), run as one script.

-- ===== sql/028_nested_leaves.sql
-- sms.nested_leaves(path, value): the leaves of a first-generation nested delta's value at `path`,
-- each with its dotted path (keys escaped as in sms.format_path): plain values, empty objects, and
-- operator objects (every key starting with $). An object that mixes operators and keys is
-- invalid (SM001): it would be neither.
CREATE OR REPLACE FUNCTION sms.nested_leaves(p_path text, p_value jsonb, OUT path text, OUT value jsonb)
RETURNS SETOF record
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_child jsonb;
    v_here  text;
BEGIN
    FOR v_key, v_child IN SELECT key, j.value FROM jsonb_each(p_value) j LOOP
        v_here := p_path || '.' || replace(replace(v_key, '\', '\\'), '.', '\.');
        IF jsonb_typeof(v_child) = 'object' AND v_child <> '{}'
           AND EXISTS (SELECT FROM jsonb_object_keys(v_child) k WHERE left(k, 1) = '$')
           AND EXISTS (SELECT FROM jsonb_object_keys(v_child) k WHERE left(k, 1) <> '$') THEN
            PERFORM sms.raise_invalid(v_here, format('"%s" mixes operators ($…) and keys in one object', v_here));
        ELSIF jsonb_typeof(v_child) = 'object' AND v_child <> '{}'
              AND NOT EXISTS (SELECT FROM jsonb_object_keys(v_child) k WHERE left(k, 1) = '$') THEN
            RETURN QUERY SELECT l.path, l.value FROM sms.nested_leaves(v_here, v_child) l;
        ELSE
            path := v_here;
            value := v_child;
            RETURN NEXT;
        END IF;
    END LOOP;
END;
$$;

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
    v_key   text;
    v_value jsonb;
    v_leaf  record;
    v_out   jsonb := '{}';
BEGIN
    IF jsonb_typeof(p_delta) IS DISTINCT FROM 'object' THEN
        RETURN p_delta;  -- sms.normalize_delta says what is wrong with it
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_delta) LOOP
        IF left(v_key, 1) <> '$' AND jsonb_typeof(v_value) = 'object'
           AND EXISTS (SELECT FROM jsonb_object_keys(v_value) k WHERE left(k, 1) <> '$')
           AND jsonb_path_exists(v_value, 'strict $.** ? (@.type() == "object").keyvalue() ? (@.key starts with "$")') THEN
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
    v_clash  record;
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

-- ===== sql/082_parse_slice.sql
-- sms.parse_slice(spec, aliases): a slice spec (DESIGN §5) into a list of parts, one per
-- comma-separated spec, naming collections through `aliases` ({"alias": "collection"}: the
-- state's, sms.aliases_of; NULL = sms.default_aliases()):
--   {"spec": text, "collection": c, "path": [keys after the member],
--    "member": exact member key | null, "whole": true when the spec names a top-level key alone,
--    "pattern": LIKE pattern on lower(member), "lo"/"hi": the key range of its literal prefix,
--    "family": the sms.member_counts family whose members are exactly those the pattern matches
--              ('' = the whole collection), or null}
-- Forms: `alias:glob` (an alias, case-insensitive, or else the collection's own name),
-- `collection.member[.path]` where the member may be a glob (`resources.*`, `tasks.*.status`),
-- and `key` alone.
-- The pattern of `alias:pattern` is a glob (`*`, `?`), matched case-insensitively even without
-- wildcards; a dotted path names its member exactly. Raises SM009 (invalid slice) with the reason.
CREATE OR REPLACE FUNCTION sms.parse_slice(p_spec text, p_aliases jsonb DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_part       text;
    v_name       text;
    v_glob       text;
    v_keys       text[];
    v_collection text;
    v_out        jsonb := '[]';
    v_prefix     text;
    v_pattern    text;
    v_alias      boolean;
BEGIN
    IF p_spec IS NULL OR btrim(p_spec) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'the slice spec is empty';
    END IF;
    FOR v_part IN SELECT btrim(p) FROM regexp_split_to_table(p_spec, ',') p LOOP
        IF v_part = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009',
                MESSAGE = format('slice spec "%s" has an empty part between commas', p_spec);
        END IF;
        IF left(v_part, 1) = ':' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009',
                MESSAGE = format('slice spec "%s" needs an alias or collection before the colon (e.g. task%s)',
                                 v_part, v_part);
        END IF;
        v_alias := v_part ~ '^[^.:\\]+:';
        IF v_alias THEN
            v_name := split_part(v_part, ':', 1);
            v_glob := substr(v_part, length(v_name) + 2);
            v_collection := coalesce(coalesce(p_aliases, sms.default_aliases()) ->> lower(v_name COLLATE "C"), v_name);
            IF v_glob = '' THEN
                RAISE EXCEPTION USING ERRCODE = 'SM009',
                    MESSAGE = format('slice spec "%s" needs a key pattern after the colon (e.g. %s:*)', v_part, v_name);
            END IF;
            v_keys := ARRAY[v_collection, v_glob];
        ELSE
            BEGIN
                v_keys := sms.parse_path(v_part);
            EXCEPTION WHEN SQLSTATE 'SM001' OR SQLSTATE 'SM006' THEN
                RAISE EXCEPTION USING ERRCODE = 'SM009',
                    MESSAGE = format('slice spec "%s" is neither alias:pattern nor a dotted path', v_part);
            END;
            IF v_keys[1] ~ '[*?]' OR EXISTS (SELECT FROM unnest(v_keys[3:]) k WHERE k ~ '[*?]') THEN
                RAISE EXCEPTION USING ERRCODE = 'SM009',
                    MESSAGE = format('slice spec "%s": only the member (second) key may hold * or ?', v_part);
            END IF;
        END IF;

        IF cardinality(v_keys) = 1 THEN
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', true,
                'path', '[]'::jsonb, 'member', NULL, 'pattern', '%', 'lo', '', 'hi', chr(1114111), 'family', '');
        ELSIF v_alias OR v_keys[2] ~ '[*?]' THEN
            v_glob := lower(v_keys[2] COLLATE "C");  -- folded as lower(member) is
            v_prefix := substring(v_glob FROM '^[^*?]*');
            v_pattern := replace(replace(regexp_replace(v_glob, '([\\%_])', '\\\1', 'g'), '*', '%'), '?', '_');
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', false,
                'path', to_jsonb(v_keys[3:]), 'member', NULL, 'pattern', v_pattern,
                'lo', v_prefix, 'hi', sms.next_prefix(v_prefix),
                'family', CASE WHEN v_glob = '*' THEN ''
                               WHEN v_glob = v_prefix || '*' AND sms.key_family(v_prefix) = v_prefix THEN v_prefix
                          END);
        ELSE
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', false,
                'path', to_jsonb(v_keys[3:]), 'member', v_keys[2],
                'pattern', regexp_replace(lower(v_keys[2] COLLATE "C"), '([\\%_])', '\\\1', 'g'),
                'lo', lower(v_keys[2] COLLATE "C"), 'hi', sms.next_prefix(lower(v_keys[2] COLLATE "C")),
                'family', NULL);
        END IF;
    END LOOP;
    IF jsonb_array_length(v_out) > 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a slice may combine at most 20 specs';
    END IF;
    RETURN v_out;
END;
$$;
