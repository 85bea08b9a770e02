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
