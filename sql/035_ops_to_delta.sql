-- sms.ops_to_delta(ops): the wire-format delta of a list of normalised ops (sms.deltas.ops), for
-- reading and re-sending: normalize_delta(ops_to_delta(ops)) gives back the same ops, except for
-- ops on keys no dotted path can name (the empty key, only set by replace_state). A replay of the
-- log uses sms.apply_ops with the logged ops directly.
CREATE OR REPLACE FUNCTION sms.ops_to_delta(p_ops jsonb) RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(
               sms.format_path(ARRAY(SELECT jsonb_array_elements_text(o -> 'path'))),
               jsonb_build_object('$' || (o ->> 'op'), o -> 'value')), '{}')
      FROM jsonb_array_elements(p_ops) o;
$$;
