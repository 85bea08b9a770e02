-- sms.read_deltas(tenant, fsa, since, limit): a page of the state's log after version `since`,
-- oldest first, as the service answers it: {"tenant_id", "fsa_id", "since", "version" (the
-- state's), "deltas": [...], "more"}. A `since` that a compaction dropped is a problem
-- (sms.check_since), not a page that silently skips deltas. Built as text rather than with
-- json_build_object, whose output pads every colon with spaces. One function, so that the
-- statement that calls it reads no table itself (sql/089_read_slice_counted.sql says why).
CREATE OR REPLACE FUNCTION sms.read_deltas(p_tenant_id text, p_fsa_id text, p_since bigint, p_limit integer)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_deltas json;
    v_more   boolean;
BEGIN
    PERFORM sms.check_since(p_tenant_id, p_fsa_id, p_since);
    SELECT to_json(array_agg(p ORDER BY p.version)) INTO v_deltas
      FROM (SELECT d.version, d.delta_id, d.actor, d.lineage_id, d.trace_id, d.parent_id, d.meta, d.ops, d.paths,
                   d.created_at
              FROM sms.deltas d
             WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
             ORDER BY d.version
             LIMIT p_limit) p;
    v_more := EXISTS (SELECT FROM sms.deltas d
                       WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_since
                       ORDER BY d.version OFFSET p_limit LIMIT 1);
    RETURN '{"tenant_id":' || to_json(p_tenant_id) || ',"fsa_id":' || to_json(p_fsa_id) || ',"since":' || p_since
           || ',"version":' || sms.current_version(p_tenant_id, p_fsa_id)
           || ',"deltas":' || coalesce(v_deltas::text, '[]') || ',"more":' || v_more::text || '}';
END;
$$;
