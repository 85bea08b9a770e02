-- sms.policy_values(tenant, fsa, targets): {dotted base path: its current value} for the bases of
-- a delta's policy targets (absent values are left out); read before and after the delta is
-- written. One or two entries per base; a whole collection only when the base is one.
CREATE OR REPLACE FUNCTION sms.policy_values(p_tenant_id text, p_fsa_id text, p_targets jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(sms.format_path(b.keys), v) FILTER (WHERE v IS NOT NULL), '{}')
      FROM (SELECT DISTINCT ARRAY(SELECT jsonb_array_elements_text(t -> 'base')) AS keys
              FROM jsonb_array_elements(p_targets) t) b,
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, b.keys) v;
$$;
