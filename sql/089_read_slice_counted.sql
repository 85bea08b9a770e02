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
