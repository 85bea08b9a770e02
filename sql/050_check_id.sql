-- sms.check_id(name, value): identifiers (tenant, fsa, actor, lineage, trace ids) are 1 to 128
-- bytes of text without control characters; tenant and fsa ids also without "/", since they are
-- single segments of URL paths. NULL passes (optional ids). Raises SM007.
CREATE OR REPLACE FUNCTION sms.check_id(p_name text, p_value text) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF p_value = '' OR octet_length(p_value) > 128 OR p_value ~ '[[:cntrl:]]'
       OR (p_name IN ('tenant_id', 'fsa_id') AND strpos(p_value, '/') > 0) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM007',
            MESSAGE = format('%s must be 1 to 128 bytes without control characters%s', p_name,
                             CASE WHEN p_name IN ('tenant_id', 'fsa_id') THEN ' or "/"' ELSE '' END),
            DETAIL = jsonb_build_object('field', p_name)::text;
    END IF;
END;
$$;
