-- ===== sql/080_summary_cache.sql
-- sms.summary_cache: the materialised slice + summary per (state, request). A row is served while
-- the fingerprint of what its slice covers (sms.slice_fingerprint) is unchanged, so writes to
-- other collections or other entries keep it valid. At most sms.summary_cache_limit() rows per
-- state; the least recently used go first.
CREATE TABLE sms.summary_cache (
    tenant_id     text        NOT NULL,
    fsa_id        text        NOT NULL,
    cache_key     text        NOT NULL,   -- md5 of the request (spec, k, order, where, options)
    request       jsonb       NOT NULL,
    version       bigint      NOT NULL,   -- the state version the slice was read at
    fingerprint   text        NOT NULL,
    result        jsonb       NOT NULL,   -- slice, total, truncated, per-spec counts
    summary       text        NOT NULL,   -- the summary's body (its header is made per response)
    slice_bytes   integer     NOT NULL,
    summary_chars integer     NOT NULL,
    hits          bigint      NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, fsa_id, cache_key)
);

-- ===== sql/081_entries_folded_member.sql
-- Index for slices: member keys folded to lower case (globs match case-insensitively), in byte
-- order (entries.member is COLLATE "C"), so a glob's literal prefix is a range scan within one
-- collection. It holds no column that a merge changes (value, version), so entry updates stay
-- HOT (heap-only) and write no index entries.
CREATE INDEX entries_folded_member ON sms.entries (tenant_id, fsa_id, collection, lower(member)) WHERE is_member;

-- ===== sql/082_parse_slice.sql
-- sms.parse_slice(spec): a slice spec (DESIGN §5) into a list of parts, one per comma-separated
-- spec:
--   {"spec": text, "collection": c, "path": [keys after the member],
--    "member": exact member key | null, "whole": true when the spec names a top-level key alone,
--    "pattern": LIKE pattern on lower(member), "lo"/"hi": the key range of its literal prefix}
-- Forms: `alias:glob` (task -> tasks, metric -> metrics, agent -> agents_online,
-- resource -> resources, any other name is the collection itself), `collection.member[.path]`
-- where the member may be a glob (`resources.*`, `tasks.*.status`), and `key` alone.
-- Globs (`*`, `?`) match case-insensitively. Raises SM009 (invalid slice) with the reason.
CREATE OR REPLACE FUNCTION sms.parse_slice(p_spec text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_part       text;
    v_name       text;
    v_glob       text;
    v_keys       text[];
    v_collection text;
    v_out        jsonb := '[]';
    v_prefix     text;
BEGIN
    IF p_spec IS NULL OR btrim(p_spec) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'the slice spec is empty';
    END IF;
    FOR v_part IN SELECT btrim(p) FROM regexp_split_to_table(p_spec, ',') p LOOP
        IF v_part = '' THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009',
                MESSAGE = format('slice spec "%s" has an empty part between commas', p_spec);
        END IF;
        IF v_part ~ '^[^.:\\]+:' THEN
            v_name := split_part(v_part, ':', 1);
            v_glob := substr(v_part, length(v_name) + 2);
            v_collection := CASE lower(v_name) WHEN 'task' THEN 'tasks' WHEN 'metric' THEN 'metrics'
                                WHEN 'agent' THEN 'agents_online' WHEN 'resource' THEN 'resources'
                                ELSE v_name END;
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
                'path', '[]'::jsonb, 'member', NULL, 'pattern', '%', 'lo', '', 'hi', chr(1114111));
        ELSIF v_keys[2] ~ '[*?]' THEN
            v_glob := lower(v_keys[2] COLLATE "C");  -- folded as lower(member) is
            v_prefix := substring(v_glob FROM '^[^*?]*');
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', false,
                'path', to_jsonb(v_keys[3:]), 'member', NULL,
                'pattern', replace(replace(regexp_replace(v_glob, '([\\%_])', '\\\1', 'g'), '*', '%'), '?', '_'),
                'lo', v_prefix, 'hi', sms.next_prefix(v_prefix));
        ELSE
            v_out := v_out || jsonb_build_object('spec', v_part, 'collection', v_keys[1], 'whole', false,
                'path', to_jsonb(v_keys[3:]), 'member', v_keys[2],
                'pattern', regexp_replace(lower(v_keys[2] COLLATE "C"), '([\\%_])', '\\\1', 'g'),
                'lo', lower(v_keys[2] COLLATE "C"), 'hi', sms.next_prefix(lower(v_keys[2] COLLATE "C")));
        END IF;
    END LOOP;
    IF jsonb_array_length(v_out) > 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a slice may combine at most 20 specs';
    END IF;
    RETURN v_out;
END;
$$;

-- ===== sql/083_next_prefix.sql
-- sms.next_prefix(prefix): the smallest string above every string that starts with `prefix` in
-- byte order (the exclusive upper bound of a prefix range scan); for '' the largest character.
CREATE OR REPLACE FUNCTION sms.next_prefix(p_prefix text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE
        WHEN p_prefix = '' OR ascii(right(p_prefix, 1)) >= 1114111 THEN p_prefix || chr(1114111)
        ELSE left(p_prefix, -1) || chr(ascii(right(p_prefix, 1)) + 1
                                       + CASE WHEN ascii(right(p_prefix, 1)) = 55295 THEN 2048 ELSE 0 END)
    END;
$$;

-- ===== sql/084_slice_entries.sql
-- sms.slice_entries(tenant, fsa, part): the member entries one parsed slice part covers (before
-- any `where`), read by a range scan of entries_folded_member within its collection. A SQL
-- function so that it is inlined into its callers.
CREATE OR REPLACE FUNCTION sms.slice_entries(p_tenant_id text, p_fsa_id text, p_part jsonb)
RETURNS TABLE (member text, value jsonb, version bigint)
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT e.member, e.value, e.version
      FROM sms.entries e
     WHERE e.tenant_id = p_tenant_id AND e.fsa_id = p_fsa_id
       AND e.collection = p_part ->> 'collection' AND e.is_member
       AND lower(e.member) >= p_part ->> 'lo' AND lower(e.member) < p_part ->> 'hi'
       AND lower(e.member) LIKE p_part ->> 'pattern'
       AND (p_part ->> 'member' IS NULL OR e.member = p_part ->> 'member');
$$;

-- ===== sql/085_slice_fingerprint.sql
-- sms.slice_fingerprint(tenant, fsa, parts): changes whenever anything a slice covers changes.
-- Per part: the count and the highest version of its candidate entries (an insert raises the
-- highest version, a delete lowers the count, an update raises the version) and the version of
-- the top-level row.
CREATE OR REPLACE FUNCTION sms.slice_fingerprint(p_tenant_id text, p_fsa_id text, p_parts jsonb)
RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT md5(string_agg(concat_ws(':', f.n, f.v, t.version), ',' ORDER BY p.i))
      FROM jsonb_array_elements(p_parts) WITH ORDINALITY p(part, i)
     CROSS JOIN LATERAL (SELECT count(*) AS n, max(s.version) AS v
                           FROM sms.slice_entries(p_tenant_id, p_fsa_id, p.part) s) f
      LEFT JOIN sms.entries t
        ON t.tenant_id = p_tenant_id AND t.fsa_id = p_fsa_id
       AND t.collection = p.part ->> 'collection' AND NOT t.is_member;
$$;

-- ===== sql/086_nest.sql
-- sms.nest(keys, value): {"k1": {"k2": ... value}}; the value itself for no keys.
CREATE OR REPLACE FUNCTION sms.nest(p_keys text[], p_value jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    FOR i IN REVERSE coalesce(cardinality(p_keys), 0) .. 1 LOOP
        p_value := jsonb_build_object(p_keys[i], p_value);
    END LOOP;
    RETURN p_value;
END;
$$;

-- ===== sql/087_deep_union.sql
-- sms.deep_union(a, b): objects merged key by key, recursively; otherwise b. Unlike a merge
-- patch, JSON nulls are kept (slices of the union of several specs).
CREATE OR REPLACE FUNCTION sms.deep_union(p_a jsonb, p_b jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key   text;
    v_value jsonb;
BEGIN
    IF p_a IS NULL OR p_b IS NULL OR jsonb_typeof(p_a) <> 'object' OR jsonb_typeof(p_b) <> 'object' THEN
        RETURN coalesce(p_b, p_a);
    END IF;
    FOR v_key, v_value IN SELECT key, value FROM jsonb_each(p_b) LOOP
        p_a := p_a || jsonb_build_object(v_key, sms.deep_union(p_a -> v_key, v_value));
    END LOOP;
    RETURN p_a;
END;
$$;

-- ===== sql/088_read_slice.sql
-- sms.read_slice_parts(tenant, fsa, parts, k, order, where): the slice of a state (DESIGN §5)
-- for parsed parts (sms.parse_slice). Per part, the matching entries are ordered by key or most
-- recent change, cut to k, and merged into a sparse sub-document of the state with the same
-- nesting. `where` is a jsonpath filter on each entry's value. Returns
--   {"slice": {...}, "total": n, "truncated": bool,
--    "parts": [{"spec", "collection", "path", "whole", "matched", "returned", "status_counts",
--               "members": [the returned members, in order]}]}
-- Cost ∝ the entries the parts cover, never the state's size. STABLE: one snapshot throughout.
CREATE OR REPLACE FUNCTION sms.read_slice_parts(p_tenant_id text, p_fsa_id text, p_parts jsonb,
                                                p_k integer, p_order text, p_where jsonpath)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_part    jsonb;
    v_path    text[];
    v_top     jsonb;
    v_slice   jsonb := '{}';
    v_total   bigint := 0;
    v_cut     boolean := false;
    v_info    jsonb := '[]';
    v_piece   record;
BEGIN
    IF p_k IS NOT NULL AND p_k < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'k must be at least 1';
    END IF;
    IF p_order NOT IN ('key', 'recent') THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = format('order must be key or recent, not %s', p_order);
    END IF;
    FOR v_part IN SELECT value FROM jsonb_array_elements(p_parts) LOOP
        v_path := ARRAY(SELECT jsonb_array_elements_text(v_part -> 'path'));
        SELECT value INTO v_top FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_part ->> 'collection' AND NOT is_member;

        IF (v_part ->> 'whole')::boolean AND jsonb_typeof(v_top) <> 'object' THEN
            -- a top-level value that is not an object: all or nothing
            SELECT count(*) AS matched, count(*) AS returned, NULL::jsonb AS status_counts,
                   '[]'::jsonb AS members, jsonb_build_object(v_part ->> 'collection', v_top) AS piece
              INTO v_piece
             WHERE v_top IS NOT NULL AND (p_where IS NULL OR jsonb_path_exists(v_top, p_where, '{}', true));
            IF v_piece.matched = 0 THEN
                v_piece.piece := NULL;
            END IF;
        ELSE
            WITH matched AS (
                SELECT s.member, s.value, s.value #> v_path AS picked,
                       row_number() OVER (ORDER BY CASE WHEN p_order = 'recent' THEN -s.version END, s.member) AS rank
                  FROM sms.slice_entries(p_tenant_id, p_fsa_id, v_part) s
                 WHERE s.value #> v_path IS NOT NULL
                   AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
            )
            SELECT count(*) AS matched,
                   count(*) FILTER (WHERE rank <= coalesce(p_k, rank)) AS returned,
                   (SELECT jsonb_object_agg(status, n) FROM (
                        SELECT value ->> 'status' AS status, count(*) AS n FROM matched
                         WHERE jsonb_typeof(value -> 'status') = 'string' GROUP BY 1) c) AS status_counts,
                   coalesce(jsonb_agg(member ORDER BY rank) FILTER (WHERE rank <= coalesce(p_k, rank)), '[]') AS members,
                   CASE WHEN count(*) FILTER (WHERE rank <= coalesce(p_k, rank)) > 0 THEN
                       jsonb_build_object(v_part ->> 'collection',
                           jsonb_object_agg(member, sms.nest(v_path, picked)) FILTER (WHERE rank <= coalesce(p_k, rank)))
                   END AS piece
              INTO v_piece
              FROM matched;
        END IF;

        v_total := v_total + v_piece.matched;
        v_cut := v_cut OR v_piece.returned < v_piece.matched;
        IF v_piece.piece IS NOT NULL THEN
            v_slice := sms.deep_union(v_slice, v_piece.piece);
        END IF;
        v_info := v_info || jsonb_build_object('spec', v_part ->> 'spec', 'collection', v_part ->> 'collection',
                                               'matched', v_piece.matched, 'returned', v_piece.returned,
                                               'status_counts', v_piece.status_counts, 'members', v_piece.members,
                                               'path', v_part -> 'path', 'whole', v_part -> 'whole');
    END LOOP;
    RETURN jsonb_build_object('slice', v_slice, 'total', v_total, 'truncated', v_cut, 'parts', v_info);
END;
$$;

-- ===== sql/089_read_slice_cached.sql
-- sms.read_slice(tenant, fsa, spec, k, order, where, options): a slice through the summary
-- cache. In one snapshot it reads the state's version and the fingerprint of what the spec
-- covers; a cached row with that fingerprint is returned as it is ("cached": true, with its
-- "summary" body); otherwise the slice is read ("cached": false, with the "fingerprint" to store
-- it under, see sms.store_slice_summary). `options` distinguishes summary settings in the key.
-- Either way the slice is exactly the state's slice at "version".
CREATE OR REPLACE FUNCTION sms.read_slice(p_tenant_id text, p_fsa_id text, p_spec text,
                                          p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                          p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := sms.parse_slice(p_spec);
    v_request jsonb := jsonb_build_object('spec', p_spec, 'k', p_k, 'order', p_order,
                                          'where', p_where::text, 'options', p_options);
    v_key     text := md5(v_request::text);
    v_version bigint;
    v_print   text;
    v_cached  sms.summary_cache;
BEGIN
    v_version := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    v_print := sms.slice_fingerprint(p_tenant_id, p_fsa_id, v_parts);
    SELECT * INTO v_cached FROM sms.summary_cache
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND cache_key = v_key AND fingerprint = v_print;
    IF FOUND THEN
        RETURN v_cached.result || jsonb_build_object('version', v_version, 'cached', true, 'cache_key', v_key,
                                                     'summary', v_cached.summary, 'computed_at', v_cached.version);
    END IF;
    RETURN sms.read_slice_parts(p_tenant_id, p_fsa_id, v_parts, p_k, p_order, p_where)
        || jsonb_build_object('version', v_version, 'cached', false, 'cache_key', v_key,
                              'request', v_request, 'fingerprint', v_print);
END;
$$;

-- ===== sql/090_store_slice_summary.sql
-- sms.store_slice_summary(...): caches a slice read by sms.read_slice with its summary body. A
-- row computed at an older version never replaces a newer one; beyond 200 rows per state the
-- least recently used are evicted.
CREATE OR REPLACE FUNCTION sms.store_slice_summary(p_tenant_id text, p_fsa_id text, p_read jsonb, p_summary text)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO sms.summary_cache AS c (tenant_id, fsa_id, cache_key, request, version, fingerprint, result,
                                        summary, slice_bytes, summary_chars)
    VALUES (p_tenant_id, p_fsa_id, p_read ->> 'cache_key', p_read -> 'request', (p_read ->> 'version')::bigint,
            p_read ->> 'fingerprint',
            jsonb_build_object('slice', p_read -> 'slice', 'total', p_read -> 'total',
                               'truncated', p_read -> 'truncated', 'parts', p_read -> 'parts'),
            p_summary, octet_length((p_read -> 'slice')::text), length(p_summary))
    ON CONFLICT (tenant_id, fsa_id, cache_key) DO UPDATE
       SET version = EXCLUDED.version, fingerprint = EXCLUDED.fingerprint, result = EXCLUDED.result,
           summary = EXCLUDED.summary, slice_bytes = EXCLUDED.slice_bytes,
           summary_chars = EXCLUDED.summary_chars, created_at = now(), last_used_at = now()
     WHERE c.version <= EXCLUDED.version;

    DELETE FROM sms.summary_cache
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
       AND cache_key IN (SELECT cache_key FROM sms.summary_cache
                          WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
                          ORDER BY last_used_at DESC OFFSET 200);
END;
$$;

