-- sms.read_slice_parts(tenant, fsa, parts, k, order, where): the slice of a state (DESIGN §5)
-- for parsed parts (sms.parse_slice). Per part, the matching entries are ordered by key (folded,
-- then exact) or most recent change, cut to k (sms.first_entries), and merged into a sparse
-- sub-document of the state with the same nesting. `where` is a jsonpath filter on each entry's
-- value. Returns
--   {"slice": {...}, "total": n, "truncated": bool,
--    "parts": [{"spec", "collection", "path", "whole", "matched", "returned", "status_counts",
--               "members": [the returned members, in order]}]}
-- Cost: never ∝ the state's size. A whole collection or key family (`task:*`, `task:DESIGN_*`,
-- `resources`) read by key without `where` costs ∝ k: sms.member_counts has its counts. Other
-- parts are counted over the entries they cover. STABLE: one snapshot throughout.
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
    v_matched bigint;
    v_counts  jsonb;
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
            -- how many match, in all and per status: one row of sms.member_counts for a whole
            -- collection or key family taken as it is, else counted over the candidates
            IF v_part ->> 'family' IS NOT NULL AND v_path = '{}' AND p_where IS NULL THEN
                SELECT c.members, c.statuses INTO v_matched, v_counts
                  FROM sms.member_counts c
                 WHERE c.tenant_id = p_tenant_id AND c.fsa_id = p_fsa_id
                   AND c.collection = v_part ->> 'collection' AND c.family = v_part ->> 'family';
                v_matched := coalesce(v_matched, 0);  -- no row: no such collection or family
                v_counts := nullif(v_counts, '{}');
            ELSE
                SELECT coalesce(sum(c.n), 0), jsonb_object_agg(c.status, c.n) FILTER (WHERE c.status IS NOT NULL)
                  INTO v_matched, v_counts
                  FROM (SELECT sms.entry_status(s.value) AS status, count(*) AS n
                          FROM sms.entries s
                         WHERE s.tenant_id = p_tenant_id AND s.fsa_id = p_fsa_id
                           AND sms.part_covers(v_part, s.collection, s.is_member, s.member)
                           AND s.value #> v_path IS NOT NULL
                           AND (p_where IS NULL OR jsonb_path_exists(s.value, p_where, '{}', true))
                         GROUP BY 1) c;
            END IF;
            SELECT v_matched AS matched, count(*) AS returned, v_counts AS status_counts,
                   coalesce(jsonb_agg(f.member ORDER BY CASE WHEN p_order = 'recent' THEN -f.version END,
                                                        lower(f.member COLLATE "C"), f.member COLLATE "C"),
                            '[]') AS members,
                   CASE WHEN count(*) > 0 THEN
                       jsonb_build_object(v_part ->> 'collection',
                                          jsonb_object_agg(f.member, sms.nest(v_path, f.value #> v_path)))
                   END AS piece
              INTO v_piece
              FROM sms.first_entries(p_tenant_id, p_fsa_id, v_part, v_path, p_where, p_order, p_k) f;
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
