-- ===== sql/059_put_entry.sql
-- sms.put_entry(...): stores one entry's new value given its old one (NULL = absent): insert,
-- update, delete, or nothing when the value did not change; a change is recorded in
-- sms.entry_history. Returns the change in entry count and content bytes (the size of the
-- values' JSON text).
CREATE OR REPLACE FUNCTION sms.put_entry(p_tenant_id text, p_fsa_id text, p_collection text,
                                         p_is_member boolean, p_member text, p_old jsonb, p_new jsonb,
                                         p_version bigint, OUT entry_delta bigint, OUT byte_delta bigint)
LANGUAGE plpgsql AS $$
BEGIN
    entry_delta := 0;
    byte_delta := coalesce(octet_length(p_new::text), 0) - coalesce(octet_length(p_old::text), 0);
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
    IF p_new IS DISTINCT FROM p_old THEN
        INSERT INTO sms.entry_history (tenant_id, fsa_id, collection, is_member, member, version, value)
        VALUES (p_tenant_id, p_fsa_id, p_collection, p_is_member, p_member, p_version, p_new)
        ON CONFLICT (tenant_id, fsa_id, collection, is_member, member, version) DO UPDATE SET value = EXCLUDED.value;
    END IF;
END;
$$;

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

