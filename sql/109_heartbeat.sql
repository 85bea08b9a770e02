-- sms.heartbeat(tenant, fsa, agent, ...): records agents_online.<agent> as the latest time the
-- agent was seen ($max of an ISO-8601 UTC timestamp, so late or concurrent heartbeats never move
-- it back). Touches only that entry, so cached summaries of other collections stay valid. The
-- delta's actor is the agent unless `actor` is given; `meta` is kept with it like any write's (its
-- aml_level is what policies see). The HTTP service makes the same delta itself
-- (app.domain.delta.heartbeat_delta, with the actor its API key names), so that a heartbeat joins
-- a busy state's group commit.
CREATE OR REPLACE FUNCTION sms.heartbeat(p_tenant_id text, p_fsa_id text, p_agent text,
                                         p_lineage_id text DEFAULT NULL, p_at timestamptz DEFAULT now(),
                                         p_meta jsonb DEFAULT '{}', p_actor text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM sms.check_id('agent', coalesce(p_agent, ''));
    RETURN sms.apply_ops(p_tenant_id, p_fsa_id,
        jsonb_build_array(jsonb_build_object(
            'path', jsonb_build_array('agents_online', p_agent), 'op', 'max',
            'value', to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))),
        '[]', coalesce(p_actor, p_agent), p_lineage_id, NULL, NULL, coalesce(p_meta, '{}') || jsonb_build_object('heartbeat', true));
END;
$$;
