-- Frozen copy of what revision 0026 installs (the sql/ files as they were), run as one script.

DROP FUNCTION sms.read_slice_counted(text, text, text, integer, text, jsonpath, text);  -- it now takes count_hits

-- ===== sql/089_count_slice_hits.sql
-- sms.count_slice_hits(tenant, fsa_ids, cache_keys, hits): adds hits counted elsewhere to the
-- summary cache's rows (the service counts the hits of rows still valid in memory, see
-- sms.read_slice_counted, and adds them up every second or so): hits[i] to the row of fsa_ids[i]
-- and cache_keys[i], and marks it used now. A row gone meanwhile (evicted, purged) takes nothing.
-- The rows are locked in one order, so that two processes adding up at once never deadlock.
-- Returns how many rows took their hits.
CREATE OR REPLACE FUNCTION sms.count_slice_hits(p_tenant_id text, p_fsa_ids text[], p_cache_keys text[],
                                                p_hits bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_now     timestamptz := now();
    v_counted integer;
BEGIN
    IF cardinality(p_fsa_ids) IS DISTINCT FROM cardinality(p_cache_keys)
       OR cardinality(p_fsa_ids) IS DISTINCT FROM cardinality(p_hits) THEN
        PERFORM sms.raise_invalid('', 'fsa_ids, cache_keys and hits must be arrays of one length');
    END IF;
    PERFORM FROM sms.summary_cache c
      JOIN unnest(p_fsa_ids, p_cache_keys) AS u(fsa_id, cache_key) USING (fsa_id, cache_key)
     WHERE c.tenant_id = p_tenant_id
     ORDER BY c.fsa_id, c.cache_key
       FOR UPDATE OF c;
    UPDATE sms.summary_cache c SET hits = c.hits + u.hits, last_used_at = v_now
      FROM (SELECT fsa_id, cache_key, sum(hits) AS hits
              FROM unnest(p_fsa_ids, p_cache_keys, p_hits) AS u(fsa_id, cache_key, hits)
             GROUP BY fsa_id, cache_key) u
     WHERE c.tenant_id = p_tenant_id AND c.fsa_id = u.fsa_id AND c.cache_key = u.cache_key;
    GET DIAGNOSTICS v_counted = ROW_COUNT;
    RETURN v_counted;
END;
$$;

-- ===== sql/089_read_slice_cached.sql
-- sms.read_slice(tenant, fsa, spec, k, order, where, options): a slice through the summary
-- cache. In one snapshot it reads the state's version and the cached row of this request (keyed
-- by the request and the state's own aliases, which decide what its specs read), and checks it:
-- valid when its collections did not change since it was last validated (sms.slice_coarse, from
-- the collections the row names: a hit parses nothing), or else when the fingerprint of what the
-- spec covers is the same (sms.slice_fingerprint; the caller then stores the new "coarse"). A
-- valid row is returned as it is ("cached": true, with its "summary" body, and "revalidated": whether
-- its fingerprint had to be checked, so that the caller may store the new "coarse"); otherwise the
-- slice is read ("cached": false, with the "request", "fingerprint" and "coarse" to store it under,
-- see sms.store_slice_summary). `options` distinguishes summary settings in the key. Either way the
-- slice is exactly the state's slice at "version".
CREATE OR REPLACE FUNCTION sms.read_slice(p_tenant_id text, p_fsa_id text, p_spec text,
                                          p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                          p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_aliases     text := (SELECT string_agg(a.alias || '=' || a.collection, ',' ORDER BY a.alias)
                             FROM sms.slice_aliases a WHERE a.tenant_id = p_tenant_id AND a.fsa_id = p_fsa_id);
    v_request     jsonb := jsonb_build_object('spec', p_spec, 'k', p_k, 'order', p_order, 'where', p_where::text,
                                              'options', p_options, 'aliases', v_aliases);
    v_key         text := md5(v_request::text);
    v_version     bigint := coalesce((SELECT s.version FROM sms.states s
                                       WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id), 0);
    v_cached      sms.summary_cache;
    v_parts       jsonb;
    v_collections jsonb;
    v_coarse      text;
    v_print       text;
BEGIN
    SELECT * INTO v_cached FROM sms.summary_cache c
     WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id AND c.cache_key = v_key;
    IF FOUND THEN
        v_coarse := sms.slice_coarse(p_tenant_id, p_fsa_id, v_cached.request -> 'collections');
    END IF;
    IF v_coarse IS DISTINCT FROM v_cached.coarse OR v_coarse IS NULL THEN
        v_parts := sms.parse_slice(p_spec, sms.aliases_of(p_tenant_id, p_fsa_id));
        v_collections := jsonb_path_query_array(v_parts, '$[*].collection');
        v_coarse := sms.slice_coarse(p_tenant_id, p_fsa_id, v_collections);
        v_print := sms.slice_fingerprint(p_tenant_id, p_fsa_id, v_parts);
    END IF;
    IF v_parts IS NULL OR v_cached.fingerprint = v_print THEN
        RETURN v_cached.result || jsonb_build_object('version', v_version, 'cached', true, 'cache_key', v_key,
                                                     'summary', v_cached.summary, 'computed_at', v_cached.version,
                                                     'coarse', v_coarse, 'revalidated', v_parts IS NOT NULL);
    END IF;
    RETURN sms.read_slice_parts(p_tenant_id, p_fsa_id, v_parts, p_k, p_order, p_where)
        || jsonb_build_object('version', v_version, 'cached', false, 'cache_key', v_key,
                              'request', v_request || jsonb_build_object('collections', v_collections),
                              'fingerprint', v_print, 'coarse', v_coarse);
END;
$$;

-- ===== sql/089_read_slice_counted.sql
-- sms.read_slice_counted(...): sms.read_slice on the primary: a read answered from the cache also
-- counts its hit and remembers the collections' versions it was found valid at — without ever
-- waiting: a row another reader is bumping just then is skipped. One function, so that the
-- statement that calls it reads no table itself: a sharded database (Citus) runs a statement on a
-- tenant's node whole, and a function read there cannot read the tables in turn.
--
-- With `count_hits` false, a hit whose row was still valid as last validated writes nothing: the
-- caller counts it and adds its hits up later (sms.count_slice_hits; the service does, so that a
-- cached slice is a pure read). A hit that had to check its row's fingerprint (a collection it
-- covers changed) is counted here all the same, as the versions it was found valid at are stored
-- with it. The answer says which: "counted" is true when this call counted the hit.
--
-- In a transaction with one snapshot (repeatable read: the service's reads on Citus, whose
-- statements reach the tenant's node one by one), a row another reader bumped since the snapshot
-- was taken cannot be updated: that hit goes uncounted rather than failing the read.
CREATE OR REPLACE FUNCTION sms.read_slice_counted(p_tenant_id text, p_fsa_id text, p_spec text,
                                                  p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                                  p_where jsonpath DEFAULT NULL, p_options text DEFAULT '',
                                                  p_count_hits boolean DEFAULT true)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_read jsonb := sms.read_slice(p_tenant_id, p_fsa_id, p_spec, p_k, p_order, p_where, p_options);
BEGIN
    IF NOT (v_read ->> 'cached')::boolean OR NOT (p_count_hits OR (v_read ->> 'revalidated')::boolean) THEN
        RETURN v_read;
    END IF;
    IF current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM sms.count_slice_hit(p_tenant_id, p_fsa_id, v_read);
    ELSE
        BEGIN
            PERFORM sms.count_slice_hit(p_tenant_id, p_fsa_id, v_read);
        EXCEPTION WHEN serialization_failure THEN
            NULL;
        END;
    END IF;
    RETURN v_read || '{"counted": true}';
END;
$$;
