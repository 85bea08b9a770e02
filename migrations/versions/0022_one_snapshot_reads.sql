-- Frozen copy of what revision 0022 installs (the sql/ files as they were), run as one script.

-- ===== sql/089_count_slice_hit.sql
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

-- ===== sql/089_read_slice_counted.sql
-- sms.read_slice_counted(...): sms.read_slice on the primary: a read answered from the cache also
-- counts its hit and remembers the collections' versions it was found valid at — without ever
-- waiting: a row another reader is bumping just then is skipped. One function, so that the
-- statement that calls it reads no table itself: a sharded database (Citus) runs a statement on a
-- tenant's node whole, and a function read there cannot read the tables in turn.
--
-- In a transaction with one snapshot (repeatable read: the service's reads on Citus, whose
-- statements reach the tenant's node one by one), a row another reader bumped since the snapshot
-- was taken cannot be updated: that hit goes uncounted rather than failing the read.
CREATE OR REPLACE FUNCTION sms.read_slice_counted(p_tenant_id text, p_fsa_id text, p_spec text,
                                                  p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                                  p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_read jsonb := sms.read_slice(p_tenant_id, p_fsa_id, p_spec, p_k, p_order, p_where, p_options);
BEGIN
    IF NOT (v_read ->> 'cached')::boolean THEN
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
    RETURN v_read;
END;
$$;
