-- sms.touches_slice(ops, parts): whether a delta's normalised ops touch what a parsed slice
-- (sms.parse_slice) covers: an op on the collection itself, on a matching member, or on a path
-- that is a prefix or an extension of the part's path inside a matching member.
CREATE OR REPLACE FUNCTION sms.touches_slice(p_ops jsonb, p_parts jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT EXISTS (
        SELECT FROM jsonb_array_elements(p_ops) o,
                    LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(o -> 'path'))) op(keys),
                    jsonb_array_elements(p_parts) p,
                    LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(p -> 'path'))) part(keys)
         WHERE op.keys[1] = p ->> 'collection'
           AND (cardinality(op.keys) = 1 OR (p ->> 'whole')::boolean
                OR (lower(op.keys[2] COLLATE "C") LIKE p ->> 'pattern'
                    AND (p ->> 'member' IS NULL OR op.keys[2] = p ->> 'member')
                    AND (op.keys[3:cardinality(part.keys) + 2] = part.keys
                         OR part.keys[1:cardinality(op.keys) - 2] = op.keys[3:]))));
$$;
