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
