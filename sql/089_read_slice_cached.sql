-- sms.read_slice(tenant, fsa, spec, k, order, where, options): a slice through the summary
-- cache. In one snapshot it reads the state's version and checks the cached row of this request:
-- valid when its collections did not change since it was last validated (sms.slice_coarse), or
-- else when the fingerprint of what the spec covers is the same (sms.slice_fingerprint; the
-- caller then stores the new "coarse"). A valid row is returned as it is ("cached": true, with
-- its "summary" body); otherwise the slice is read ("cached": false, with the "fingerprint" and
-- "coarse" to store it under, see sms.store_slice_summary). `options` distinguishes summary
-- settings in the key. Either way the slice is exactly the state's slice at "version".
CREATE OR REPLACE FUNCTION sms.read_slice(p_tenant_id text, p_fsa_id text, p_spec text,
                                          p_k integer DEFAULT NULL, p_order text DEFAULT 'key',
                                          p_where jsonpath DEFAULT NULL, p_options text DEFAULT '')
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_parts   jsonb := sms.parse_slice(p_spec, sms.aliases_of(p_tenant_id, p_fsa_id));
    -- the collections are part of the key: a changed alias reads (and caches) afresh
    v_request jsonb := jsonb_build_object('spec', p_spec, 'k', p_k, 'order', p_order,
                                          'where', p_where::text, 'options', p_options,
                                          'collections', jsonb_path_query_array(v_parts, '$[*].collection'));
    v_key     text := md5(v_request::text);
    v_version bigint;
    v_coarse  text := sms.slice_coarse(p_tenant_id, p_fsa_id, v_parts);
    v_print   text;
    v_cached  sms.summary_cache;
BEGIN
    v_version := coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
    SELECT * INTO v_cached FROM sms.summary_cache
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND cache_key = v_key;
    IF FOUND AND v_cached.coarse <> v_coarse THEN
        v_print := sms.slice_fingerprint(p_tenant_id, p_fsa_id, v_parts);
    END IF;
    IF FOUND AND (v_cached.coarse = v_coarse OR v_cached.fingerprint = v_print) THEN
        RETURN v_cached.result || jsonb_build_object('version', v_version, 'cached', true, 'cache_key', v_key,
                                                     'summary', v_cached.summary, 'computed_at', v_cached.version,
                                                     'coarse', v_coarse);
    END IF;
    RETURN sms.read_slice_parts(p_tenant_id, p_fsa_id, v_parts, p_k, p_order, p_where)
        || jsonb_build_object('version', v_version, 'cached', false, 'cache_key', v_key, 'request', v_request,
                              'fingerprint', coalesce(v_print, sms.slice_fingerprint(p_tenant_id, p_fsa_id, v_parts)),
                              'coarse', v_coarse);
END;
$$;
