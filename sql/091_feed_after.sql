-- sms.feed_after(tenant, fsa, after_position, after_version, limit): the deltas of a tenant (or of
-- one state when fsa is given) after a place in its feed, oldest first, for subscribers; each with
-- its feed position (0 for one state's feed, which goes by version alone).
-- One state's versions are assigned under the state's lock, so they commit in order and
-- `version > after_version` never skips one. A tenant's feed is read in the order of sms.feed,
-- whose positions become visible in order (sql/013_feed.sql): what a reader has not seen yet always
-- comes after what it has seen. NOTIFY only wakes readers; this is what they read.
-- PL/pgSQL, not SQL: a sharded database (Citus) cannot plan a table-reading SQL function.
CREATE OR REPLACE FUNCTION sms.feed_after(p_tenant_id text, p_fsa_id text, p_after_position bigint,
                                          p_after_version bigint, p_limit integer)
RETURNS TABLE (tenant_id text, fsa_id text, version bigint, delta_id uuid, actor text, lineage_id text,
               trace_id text, parent_id text, meta jsonb, ops jsonb, paths text[], collections text[],
               created_at timestamptz, feed_position bigint)
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
#variable_conflict use_column
BEGIN
    IF p_fsa_id IS NOT NULL THEN
        RETURN QUERY
        SELECT d.tenant_id, d.fsa_id, d.version, d.delta_id, d.actor, d.lineage_id, d.trace_id, d.parent_id,
               d.meta, d.ops, d.paths, d.collections, d.created_at, 0::bigint
          FROM sms.deltas d
         WHERE d.tenant_id = p_tenant_id AND d.fsa_id = p_fsa_id AND d.version > p_after_version
         ORDER BY d.version
         LIMIT p_limit;
    ELSE
        RETURN QUERY
        SELECT d.tenant_id, d.fsa_id, d.version, d.delta_id, d.actor, d.lineage_id, d.trace_id, d.parent_id,
               d.meta, d.ops, d.paths, d.collections, d.created_at, f.position
          FROM sms.feed f
          JOIN sms.deltas d
            ON d.tenant_id = f.tenant_id AND d.fsa_id = f.fsa_id AND d.version BETWEEN f.from_version AND f.to_version
         WHERE f.tenant_id = p_tenant_id AND d.tenant_id = p_tenant_id AND f.position >= p_after_position
           AND (f.position, d.version) > (p_after_position, p_after_version)  -- NULL: not committed
         ORDER BY f.position, d.version
         LIMIT p_limit;
    END IF;
END;
$$;

-- sms.feed_position(tenant, fsa, version): the position in the tenant's feed of the transaction
-- that made this version of the state (where a tenant subscriber resuming from "fsa:version"
-- stands); NULL when the log holds no such version.
CREATE OR REPLACE FUNCTION sms.feed_position(p_tenant_id text, p_fsa_id text, p_version bigint) RETURNS bigint
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (SELECT f.position FROM sms.feed f
             WHERE f.tenant_id = p_tenant_id AND f.fsa_id = p_fsa_id
               AND f.to_version >= p_version AND f.from_version <= p_version
             ORDER BY f.to_version
             LIMIT 1);
END;
$$;
