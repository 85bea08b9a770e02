-- sms.entry_status(value): the status of a task-like entry (its "status", when that is a string),
-- or NULL. What slices count by status (sms.member_counts, sms.read_slice_parts).
CREATE OR REPLACE FUNCTION sms.entry_status(p_value jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(p_value -> 'status') = 'string' THEN p_value ->> 'status' END;
$$;
