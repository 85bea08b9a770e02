-- sms.tally(counts, status, by): counts by status ({"OPEN": 3, …}) with one status's count moved
-- by `by`; a count that reaches 0 is dropped, and a NULL status changes nothing. STABLE, as
-- to_jsonb is, so that the planner inlines it (an IMMUTABLE function it cannot, its body being
-- more volatile: each call ran as a statement of its own).
CREATE OR REPLACE FUNCTION sms.tally(p_counts jsonb, p_status text, p_by bigint) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_status IS NULL THEN p_counts
                WHEN coalesce((p_counts ->> p_status)::bigint, 0) + p_by = 0 THEN p_counts - p_status
                ELSE jsonb_set(p_counts, ARRAY[p_status], to_jsonb(coalesce((p_counts ->> p_status)::bigint, 0) + p_by))
           END;
$$;
