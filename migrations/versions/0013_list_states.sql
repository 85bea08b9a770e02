-- Frozen copy of what revision 0013 installs (the sql/ files as they were), run as one script.

-- ===== sql/130_list_states.sql
-- sms.list_states(tenant, prefix, after, limit): a page of a tenant's states in id order, each
-- with its version, entry count, size (bytes of its entries' values) and when it was created and
-- last changed: {"tenant_id", "states": [...], "next"}, where `next` is the `after` of the next
-- page and null on the last. Only ids starting with `prefix` ('' for all) and ordered after `after`
-- ('' for the first page). The primary key is walked in order from the larger of the two, so a page
-- costs about its size (plus, with a prefix, the ids that sort after the prefix's own). PL/pgSQL, not
-- SQL: a table-reading SQL function cannot be planned by a distributed PostgreSQL (DESIGN §14).
CREATE OR REPLACE FUNCTION sms.list_states(p_tenant_id text, p_prefix text, p_after text, p_limit integer)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_page jsonb;
BEGIN
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'fsa_id', s.fsa_id, 'version', s.version, 'entries', s.entry_count,
               'size_bytes', s.content_bytes, 'created_at', s.created_at, 'updated_at', s.updated_at)
               ORDER BY s.fsa_id), '[]')
      INTO v_page
      FROM (SELECT *
              FROM sms.states
             WHERE tenant_id = p_tenant_id AND fsa_id > p_after AND fsa_id >= p_prefix
               AND starts_with(fsa_id, p_prefix)
             ORDER BY fsa_id
             LIMIT p_limit + 1) s;
    RETURN jsonb_build_object(
        'tenant_id', p_tenant_id,
        'states', CASE WHEN jsonb_array_length(v_page) > p_limit THEN v_page - -1 ELSE v_page END,
        'next', CASE WHEN jsonb_array_length(v_page) > p_limit THEN v_page -> (p_limit - 1) -> 'fsa_id' END);
END;
$$;
