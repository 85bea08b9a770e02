-- sms.policy_anchor(keys): a rule path's literal leading keys as a dotted path ('' when its first
-- key is a glob): the index key under which sms.policy_targets finds the rules a path may concern.
CREATE OR REPLACE FUNCTION sms.policy_anchor(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(sms.format_path(p_keys[1:(SELECT coalesce(min(n) - 1, cardinality(p_keys))
                                                 FROM unnest(p_keys) WITH ORDINALITY u(k, n)
                                                WHERE k ~ '[*?]')]), '');
$$;
