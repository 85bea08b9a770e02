-- sms.read_paths(tenant, fsa, ops): {"dotted path": current value} for the paths of a list of
-- normalised ops or expectations; absent paths are left out. Used in conflict reports.
CREATE OR REPLACE FUNCTION sms.read_paths(p_tenant_id text, p_fsa_id text, p_items jsonb)
RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(sms.format_path(k), v) FILTER (WHERE v IS NOT NULL), '{}')
      FROM jsonb_array_elements(p_items) i,
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(i -> 'path'))) p(k),
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) v;
$$;
