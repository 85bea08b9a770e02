-- sms.default_aliases(): the aliases every state's slice specs know (DESIGN §5), the original
-- service's names: task -> tasks, metric -> metrics, agent -> agents_online, resource -> resources.
-- A state can add its own or point these elsewhere (sms.set_alias).
CREATE OR REPLACE FUNCTION sms.default_aliases() RETURNS jsonb
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '{"task": "tasks", "metric": "metrics", "agent": "agents_online", "resource": "resources"}'::jsonb;
$$;
