-- ===== sql/077_default_aliases.sql
-- sms.default_aliases(): the aliases every state's slice specs know (DESIGN §5), the original
-- service's names: task -> tasks, metric -> metrics, agent -> agents_online, resource -> resources.
-- A state can add its own or point these elsewhere (sms.set_alias).
CREATE OR REPLACE FUNCTION sms.default_aliases() RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{"task": "tasks", "metric": "metrics", "agent": "agents_online", "resource": "resources"}'::jsonb;
$$;

-- ===== sql/078_slice_aliases.sql
-- sms.slice_aliases: a state's own aliases for slice specs (`todo:*` reading `tasks`), beside or
-- over sms.default_aliases. Aliases are configuration, not content: setting one is not a delta.
-- Names are stored folded to lower case, as specs match them case-insensitively.
CREATE TABLE sms.slice_aliases (
    tenant_id  text             NOT NULL,
    fsa_id     text             NOT NULL,
    alias      text COLLATE "C" NOT NULL,
    collection text COLLATE "C" NOT NULL,
    created_at timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, alias)
);

-- ===== sql/079_aliases_of.sql
-- sms.aliases_of(tenant, fsa): the aliases of a state's slice specs, {"alias": "collection"}: the
-- defaults, overridden or extended by the state's own (sms.slice_aliases).
CREATE OR REPLACE FUNCTION sms.aliases_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sms.default_aliases() || coalesce((SELECT jsonb_object_agg(a.alias, a.collection)
                                                FROM sms.slice_aliases a
                                               WHERE a.tenant_id = p_tenant_id AND a.fsa_id = p_fsa_id), '{}');
$$;

-- ===== sql/082_parse_slice.sql
DROP FUNCTION sms.parse_slice(text);  -- it now takes the state's aliases
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

-- ===== sql/089_read_slice_cached.sql
-- sms.read_slice(tenant, fsa, spec, k, order, where, options): a slice through the summary
-- cache. In one snapshot it reads the state's version and checks the cached row of this request:
-- valid when its collections did not change since it was last validated (sms.slice_coarse), or
-- else when the fingerprint of what the spec covers is the same (sms.slice_fingerprint; the
-- caller then stores the new "coarse"). A valid row is returned as it is ("cached": true, with
-- its "summary" body); otherwise the slice is read ("cached": false, with the "fingerprint" and
-- "coarse" to store it under, see sms.store_slice_summary). `options` distinguishes summary
-- settings in the key. Either way the slice is exactly the state's slice at "version".
CREATE OR REPLACE FUNCTION sms.read_slice(p_tenant_id text, p_fsa_id text, p_spec text,
                                          p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                          p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := sms.parse_slice(p_spec, sms.aliases_of(p_tenant_id, p_fsa_id));
    -- the collections are part of the key: a changed alias reads (and caches) afresh
    v_request jsonb := jsonb_build_object('spec', p_spec, 'k', p_k, 'order', p_order,
                                          'where', p_where::text, 'options', p_options,
                                          'collections', jsonb_path_query_array(v_parts, '$[*].collection'));
    v_key     text := md5(v_request::text);
    v_version bigint;
    v_coarse  text := sms.slice_coarse(p_tenant_id, p_fsa_id, v_parts);
    v_print   text;
    v_cached  sms.summary_cache;
BEGIN
    v_version := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    SELECT * INTO v_cached FROM sms.summary_cache
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND cache_key = v_key;
    IF FOUND AND v_cached.coarse <> v_coarse THEN
        v_print := sms.slice_fingerprint(p_tenant_id, p_fsa_id, v_parts);
    END IF;
    IF FOUND AND (v_cached.coarse = v_coarse OR v_cached.fingerprint = v_print) THEN
        RETURN v_cached.result || jsonb_build_object('version', v_version, 'cached', true, 'cache_key', v_key,
                                                     'summary', v_cached.summary, 'computed_at', v_cached.version,
                                                     'coarse', v_coarse);
    END IF;
    RETURN sms.read_slice_parts(p_tenant_id, p_fsa_id, v_parts, p_k, p_order, p_where)
        || jsonb_build_object('version', v_version, 'cached', false, 'cache_key', v_key, 'request', v_request,
                              'fingerprint', coalesce(v_print, sms.slice_fingerprint(p_tenant_id, p_fsa_id, v_parts)),
                              'coarse', v_coarse);
END;
$$;

-- ===== sql/095_set_alias.sql
-- sms.set_alias(tenant, fsa, alias, collection): from now on `alias:pattern` in the state's slice
-- specs reads `collection`; a NULL collection removes the state's own alias (a default one
-- applies again). Returns the state's aliases (sms.aliases_of). An alias is a letter, then up to
-- 62 letters, digits, "_" or "-" (matched case-insensitively); a collection 1 to 512 characters
-- without control characters; a state has at most 100 aliases of its own. Raises SM009 (invalid
-- slice) otherwise, SM007 for bad ids.
CREATE OR REPLACE FUNCTION sms.set_alias(p_tenant_id text, p_fsa_id text, p_alias text, p_collection text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_alias text := lower(p_alias COLLATE "C");
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, ''));
    IF v_alias IS NULL OR v_alias !~ '^[a-z][a-z0-9_-]{0,62}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009',
            MESSAGE = format('alias "%s" must be a letter, then up to 62 letters, digits, _ or -', left(p_alias, 80));
    END IF;
    IF p_collection = '' OR length(p_collection) > 512 OR p_collection ~ '[[:cntrl:]]' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009',
            MESSAGE = 'an alias names a collection of 1 to 512 characters without control characters';
    END IF;
    -- one alias writer per state at a time, so that the limit below holds
    PERFORM pg_advisory_xact_lock(hashtextextended('sms.slice_aliases/' || p_tenant_id || '/' || p_fsa_id, 0));
    IF p_collection IS NULL THEN
        DELETE FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND alias = v_alias;
    ELSE
        INSERT INTO sms.slice_aliases AS a (tenant_id, fsa_id, alias, collection)
        VALUES (p_tenant_id, p_fsa_id, v_alias, p_collection)
        ON CONFLICT (tenant_id, fsa_id, alias) DO UPDATE SET collection = EXCLUDED.collection, created_at = now();
        IF (SELECT count(*) FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id) > 100 THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a state has at most 100 aliases of its own';
        END IF;
    END IF;
    RETURN sms.aliases_of(p_tenant_id, p_fsa_id);
END;
$$;

-- ===== sql/106_changes_since.sql
-- sms.changes_since(tenant, fsa, since, slice): what changed after version `since`, for an agent
-- coming back to a state: the number of deltas, the actors and lineages, and each changed path
-- once, with its value at `since` ("old", left out when it did not exist) and now ("new", left
-- out when removed), the last version that changed it and who did. With a slice spec, only the
-- changes that touch the slice. Cost ∝ the deltas since `since`.
CREATE OR REPLACE FUNCTION sms.changes_since(p_tenant_id text, p_fsa_id text, p_since bigint, p_slice text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := CASE WHEN p_slice IS NOT NULL
                            THEN sms.parse_slice(p_slice, sms.aliases_of(p_tenant_id, p_fsa_id)) END;
    v_version bigint := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
BEGIN
    PERFORM sms.check_version(p_tenant_id, p_fsa_id, p_since);
    RETURN (
        WITH ops AS (
            SELECT d.version, coalesce(d.actor, '(anonymous)') AS actor, d.lineage_id,
                   ARRAY(SELECT jsonb_array_elements_text(o.op -> 'path')) AS keys
              FROM sms.deltas d
             CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
             WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
               AND (v_parts IS NULL OR sms.touches_slice(jsonb_build_array(o.op), v_parts))
        ), paths AS (
            SELECT keys, max(version) AS last_version, array_agg(DISTINCT actor ORDER BY actor) AS actors
              FROM ops GROUP BY keys
        )
        SELECT jsonb_build_object(
            'since', p_since, 'version', v_version,
            'deltas', (SELECT count(DISTINCT version) FROM ops),
            'actors', coalesce((SELECT jsonb_object_agg(actor, n) FROM (
                                    SELECT actor, count(DISTINCT version) AS n FROM ops GROUP BY actor) a), '{}'),
            'lineages', coalesce((SELECT jsonb_object_agg(lineage_id, n) FROM (
                                      SELECT lineage_id, count(DISTINCT version) AS n FROM ops
                                       WHERE lineage_id IS NOT NULL GROUP BY lineage_id) l), '{}'),
            'changes', coalesce((
                SELECT jsonb_agg(jsonb_strip_nulls(jsonb_build_object(
                           'path', sms.format_path(p.keys), 'version', p.last_version, 'actors', to_jsonb(p.actors)))
                       || CASE WHEN old IS NULL THEN '{}' ELSE jsonb_build_object('old', old) END
                       || CASE WHEN new IS NULL THEN '{}' ELSE jsonb_build_object('new', new) END
                       ORDER BY sms.format_path(p.keys))
                  FROM paths p,
                       LATERAL sms.value_at(p_tenant_id, p_fsa_id, p.keys, p_since) old,
                       LATERAL sms.read_path(p_tenant_id, p_fsa_id, p.keys) new), '[]'))
          FROM (SELECT 1) one);
END;
$$;

