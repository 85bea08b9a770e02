-- sms.set_alias(tenant, fsa, alias, collection): from now on `alias:pattern` in the state's slice
-- specs reads `collection`; a NULL collection removes the state's own alias (a default one
-- applies again). Returns the state's aliases (sms.aliases_of). An alias is a letter, then up to
-- 62 letters, digits, "_" or "-" (matched case-insensitively); a collection 1 to 512 characters
-- without control characters; a state has at most 100 aliases of its own. Raises SM009 (invalid
-- slice) otherwise, SM007 for bad ids. Takes the state's fence (sms.state_fence), so that a purge
-- under way is never passed.
CREATE OR REPLACE FUNCTION sms.set_alias(p_tenant_id text, p_fsa_id text, p_alias text, p_collection text)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_alias text := lower(p_alias COLLATE "C");
    v_now   timestamptz := now();  -- a value: Citus refuses now() in an upsert's SET
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
    PERFORM sms.state_fence(p_tenant_id, p_fsa_id);
    -- one alias writer per state at a time, so that the limit below holds
    PERFORM pg_advisory_xact_lock(hashtextextended('sms.slice_aliases/' || p_tenant_id || '/' || p_fsa_id, 0));
    IF p_collection IS NULL THEN
        DELETE FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND alias = v_alias;
    ELSE
        INSERT INTO sms.slice_aliases AS a (tenant_id, fsa_id, alias, collection)
        VALUES (p_tenant_id, p_fsa_id, v_alias, p_collection)
        ON CONFLICT (tenant_id, fsa_id, alias) DO UPDATE SET collection = EXCLUDED.collection, created_at = v_now;
        IF (SELECT count(*) FROM sms.slice_aliases WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id) > 100 THEN
            RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'a state has at most 100 aliases of its own';
        END IF;
    END IF;
    RETURN sms.aliases_of(p_tenant_id, p_fsa_id);
END;
$$;
