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
