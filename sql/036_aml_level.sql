-- sms.aml_level(meta): the AML level a delta is applied at, from its metadata (meta.aml_level: the
-- service puts the level of the request's key there, or the lower one the request claimed); NULL
-- when none is given or it is no whole number. Policies treat NULL as level 0.
CREATE OR REPLACE FUNCTION sms.aml_level(p_meta jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_meta ->> 'aml_level' ~ '^\s*-?[0-9]{1,9}\s*$' THEN (p_meta ->> 'aml_level')::integer END;
$$;
