-- sms.store_slice_summary(...): caches a slice read by sms.read_slice with its summary body. A
-- row computed at an older version never replaces a newer one; beyond 200 rows per state the
-- least recently used are evicted. A read from before the state was purged is not kept (the
-- state's version is below it now; sms.state_fence keeps a purge from passing a store under way).
CREATE OR REPLACE FUNCTION sms.store_slice_summary(p_tenant_id text, p_fsa_id text, p_read jsonb, p_summary text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := now();  -- a value: Citus refuses now() in an upsert's SET
BEGIN
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    IF (p_read ->> 'version')::bigint > sms.current_version(p_tenant_id, p_fsa_id) THEN
        RETURN;
    END IF;
    INSERT INTO sms.summary_cache AS c (tenant_id, fsa_id, cache_key, request, version, fingerprint, coarse,
                                        result, summary, slice_bytes, summary_chars)
    VALUES (p_tenant_id, p_fsa_id, p_read ->> 'cache_key', p_read -> 'request', (p_read ->> 'version')::bigint,
            p_read ->> 'fingerprint', p_read ->> 'coarse',
            jsonb_build_object('slice', p_read -> 'slice', 'total', p_read -> 'total',
                               'truncated', p_read -> 'truncated', 'parts', p_read -> 'parts'),
            p_summary, octet_length((p_read -> 'slice')::text), length(p_summary))
    ON CONFLICT (tenant_id, fsa_id, cache_key) DO UPDATE
       SET version = EXCLUDED.version, fingerprint = EXCLUDED.fingerprint, coarse = EXCLUDED.coarse,
           result = EXCLUDED.result,
           summary = EXCLUDED.summary, slice_bytes = EXCLUDED.slice_bytes,
           summary_chars = EXCLUDED.summary_chars, created_at = v_now, last_used_at = v_now
     WHERE c.version <= EXCLUDED.version;

    DELETE FROM sms.summary_cache
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
       AND cache_key IN (SELECT cache_key FROM sms.summary_cache
                          WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id
                          ORDER BY last_used_at DESC OFFSET 200);
END;
$$;
