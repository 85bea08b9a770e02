-- sms.count_slice_hit(tenant, fsa, read): counts a cache hit of sms.read_slice's answer `read` on
-- its row and remembers the collections' versions it was found valid at; a row another reader is
-- bumping just then is skipped (never waited for).
CREATE OR REPLACE FUNCTION sms.count_slice_hit(p_tenant_id text, p_fsa_id text, p_read jsonb)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE sms.summary_cache c SET hits = c.hits + 1, last_used_at = now(), coarse = p_read ->> 'coarse'
     WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
       AND c.ctid = (SELECT s.ctid FROM sms.summary_cache s
                      WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id AND s.cache_key = p_read ->> 'cache_key'
                        FOR UPDATE SKIP LOCKED);
END;
$$;
