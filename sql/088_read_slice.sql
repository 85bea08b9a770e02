-- sms.read_slice_parts(tenant, fsa, parts, k, order, where): the slice of a state (DESIGN §5)
-- for parsed parts (sms.parse_slice). Per part, the matching entries are ordered by key or most
-- recent change, cut to k, and merged into a sparse sub-document of the state with the same
-- nesting. `where` is a jsonpath filter on each entry's value. Returns
--   {"slice": {...}, "total": n, "truncated": bool,
--    "parts": [{"spec", "collection", "path", "whole", "matched", "returned", "status_counts",
--               "members": [the returned members, in order]}]}
-- Cost ∝ the entries the parts cover, never the state's size. STABLE: one snapshot throughout.
CREATE OR REPLACE FUNCTION sms.read_slice_parts(p_tenant_id text, p_fsa_id text, p_parts jsonb,
                                                p_k integer, p_order text, p_where jsonpath)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
DECLARE
    v_part    jsonb;
    v_path    text[];
    v_top     jsonb;
    v_slice   jsonb := '{}';
    v_total   bigint := 0;
    v_cut     boolean := false;
    v_info    jsonb := '[]';
    v_piece   record;
BEGIN
    IF p_k IS NOT NULL AND p_k < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = 'k must be at least 1';
    END IF;
    IF p_order NOT IN ('key', 'recent') THEN
        RAISE EXCEPTION USING ERRCODE = 'SM009', MESSAGE = format('order must be key or recent, not %s', p_order);
    END IF;
    FOR v_part IN SELECT value FROM jsonb_array_elements(p_parts) LOOP
        v_path := ARRAY(SELECT jsonb_array_elements_text(v_part -> 'path'));
        SELECT value INTO v_top FROM sms.entries
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND collection = v_part ->> 'collection' AND NOT is_member;

        IF (v_part ->> 'whole')::boolean AND jsonb_typeof(v_top) <> 'object' THEN
            -- a top-level value that is not an object: all or nothing
            SELECT count(*) AS matched, count(*) AS returned, NULL::jsonb AS status_counts,
                   '[]'::jsonb AS members, jsonb_build_object(v_part ->> 'collection', v_top) AS piece
              INTO v_piece
             WHERE v_top IS NOT NULL AND (p_where IS NULL OR jsonb_path_exists(v_top, p_where, '{}', true));
            IF v_piece.matched = 0 THEN
                v_piece.piece := NULL;
            END IF;
        ELSE
            WITH matched AS (
                SELECT s.member, s.value, s.value #> v_path AS picked,
                       row_number() OVER (ORDER BY CASE WHEN p_order = 'recent' THEN -s.version END, s.member) AS rank
                  FROM sms.slice_entries(p_tenant_id, p_fsa_id, v_part) s
                 WHERE s.value #> v_path IS NOT NULL
                   AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
            )
            SELECT count(*) AS matched,
                   count(*) FILTER (WHERE rank <= coalesce(p_k, rank)) AS returned,
                   (SELECT jsonb_object_agg(status, n) FROM (
                        SELECT value ->> 'status' AS status, count(*) AS n FROM matched
                         WHERE jsonb_typeof(value -> 'status') = 'string' GROUP BY 1) c) AS status_counts,
                   coalesce(jsonb_agg(member ORDER BY rank) FILTER (WHERE rank <= coalesce(p_k, rank)), '[]') AS members,
                   CASE WHEN count(*) FILTER (WHERE rank <= coalesce(p_k, rank)) > 0 THEN
                       jsonb_build_object(v_part ->> 'collection',
                           jsonb_object_agg(member, sms.nest(v_path, picked)) FILTER (WHERE rank <= coalesce(p_k, rank)))
                   END AS piece
              INTO v_piece
              FROM matched;
        END IF;

        v_total := v_total + v_piece.matched;
        v_cut := v_cut OR v_piece.returned < v_piece.matched;
        IF v_piece.piece IS NOT NULL THEN
            v_slice := sms.deep_union(v_slice, v_piece.piece);
        END IF;
        v_info := v_info || jsonb_build_object('spec', v_part ->> 'spec', 'collection', v_part ->> 'collection',
                                               'matched', v_piece.matched, 'returned', v_piece.returned,
                                               'status_counts', v_piece.status_counts, 'members', v_piece.members,
                                               'path', v_part -> 'path', 'whole', v_part -> 'whole');
    END LOOP;
    RETURN jsonb_build_object('slice', v_slice, 'total', v_total, 'truncated', v_cut, 'parts', v_info);
END;
$$;
