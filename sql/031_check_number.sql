-- sms.check_number(path, value): every number in `value` has an absolute value below 10^18 and at
-- most 18 decimal places: what every reader renders back exactly, in SQL and in Python alike (an
-- integer fits 64 bits, no number has more than 36 digits). Raises 22003 (number out of range)
-- naming the path and the number. Checked on what deltas send and on what $inc makes of it. One
-- walk of the value; the tests are in the order that keeps the arithmetic off numbers of
-- thousands of digits (jsonpath's || stops at the first that holds). Callers test sms.needs_check
-- first: the walk is for values that may hold a number out of range.
CREATE OR REPLACE FUNCTION sms.check_number(p_path text, p_value jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_found jsonb := jsonb_path_query_first(p_value, 'strict $.** ? (@.type() == "number"
        && (@ >= 1e18 || @ <= -1e18 || (@ != 0 && @ < 1e-18 && @ > -1e-18) || (@ * 1e18).floor() != @ * 1e18))');
BEGIN
    IF v_found IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '22003',
            MESSAGE = format('"%s" would hold the number %s, out of range: numbers are kept with an absolute value '
                             'below 10^18 and at most 18 decimal places', p_path,
                             CASE WHEN length(v_found::text) > 40 THEN left(v_found::text, 20) || '…'
                                  ELSE v_found::text END),
            DETAIL = jsonb_build_object('path', p_path)::text;
    END IF;
END;
$$;

-- sms.needs_check(value): whether sms.check_value has anything to look at in a value: an object, an
-- array, or a number sms.check_number refuses (10^18 or more, or more than 18 decimal places: what
-- its walk finds, told by an expression). Strings, booleans, null and numbers in range — nearly
-- every value a delta sends or $inc makes — are left without a statement: callers test this first.
CREATE OR REPLACE FUNCTION sms.needs_check(p_value jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE jsonb_typeof(p_value)
           WHEN 'number' THEN abs(p_value::numeric) >= 1e18 OR min_scale(p_value::numeric) > 18
           ELSE jsonb_typeof(p_value) IN ('object', 'array') END;
$$;
