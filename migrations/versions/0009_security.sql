-- Frozen copy of what revision 0009 installs (the sql/ files as they were), run as one script.

-- ===== sql/002_api_role.sql
-- Role sms_api: the role the HTTP service's queries run as (DESIGN §10, the second wall). It is
-- no superuser, cannot bypass row-level security and owns nothing, so every tenant table's policy
-- (sql/180_tenant_isolation.sql) binds it: a transaction sees and writes only the rows of the
-- tenants it acts for (sms.act_for). Roles belong to the whole cluster, so it is created once and
-- shared by every database of the cluster. It may log in but has no password: trust or peer
-- authentication (the embedded server's) lets the service in; elsewhere an operator gives it one
-- and names it in SMS_API_DATABASE_URL.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'sms_api') THEN
        CREATE ROLE sms_api LOGIN NOSUPERUSER NOINHERIT NOCREATEDB NOCREATEROLE NOBYPASSRLS;
    END IF;
EXCEPTION
    WHEN duplicate_object OR unique_violation THEN
        NULL;  -- another database's migration created it at the same moment
    WHEN insufficient_privilege THEN
        RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
            MESSAGE = 'the migration needs the role sms_api and may not create it',
            HINT = 'ask a superuser to run: CREATE ROLE sms_api LOGIN PASSWORD ''…'' (or grant CREATEROLE)';
END;
$$;
GRANT USAGE ON SCHEMA sms TO sms_api;

-- ===== sql/003_request_tenants.sql
-- sms.request_tenants(): the tenants the current transaction acts for, as set by sms.act_for;
-- NULL when it acts for none. Every tenant table's row-level security policy compares tenant_id
-- with it (sql/180_tenant_isolation.sql), so for any role but the tables' owner NULL means no row.
CREATE OR REPLACE FUNCTION sms.request_tenants() RETURNS text[]
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT nullif(current_setting('sms.tenants', true), '')::text[];
$$;

-- ===== sql/004_act_for.sql
-- sms.act_for(tenants): makes the current transaction act for these tenants (sms.request_tenants)
-- and returns true. The service's statements start from it — `SELECT … FROM sms.act_for($n)`, or
-- a LATERAL subquery that waits for it — so the setting is in place, for that statement's
-- transaction only, before anything reads a table; the tenants come from the request's API key,
-- never from the ids the statement names. NULL acts for no tenant.
CREATE OR REPLACE FUNCTION sms.act_for(p_tenants text[]) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM set_config('sms.tenants', coalesce(p_tenants::text, ''), true);
    RETURN true;
END;
$$;

-- ===== sql/022_policies.sql
-- sms.policies: the rules a state's values must keep (DESIGN §10), evaluated by the merge on the
-- values a delta produces (sms.policy_targets, sms.policy_violations). fsa_id '' holds the
-- tenant's defaults; a state's own rules on a path replace the defaults on that path. `keys` is
-- the rule's path glob split into keys; `anchor` its literal leading keys as a dotted path ('' when
-- it starts with a glob). The primary key leads with the anchor, so that the rules that can concern
-- a delta's path are found by a few searches of it, however many rules there are.
CREATE TABLE sms.policies (
    tenant_id text             NOT NULL,
    fsa_id    text             NOT NULL,   -- '' = the tenant's defaults
    rule_no   integer          NOT NULL,   -- its place in the rule set
    path      text             NOT NULL,   -- as given: tasks.*.status, resources.inventory.*, **
    keys      text[]           NOT NULL,
    anchor    text COLLATE "C" NOT NULL,
    rule      jsonb            NOT NULL,   -- the normalised rule (sms.check_rule)
    PRIMARY KEY (tenant_id, fsa_id, anchor, rule_no)
);

-- ===== sql/023_policy_changes.sql
-- sms.policy_changes: every change of a rule set (sms.set_policy), who made it and the rules it
-- set; append-only.
CREATE TABLE sms.policy_changes (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,   -- '' = the tenant's defaults
    change_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    changed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor      text,
    rules      jsonb       NOT NULL,
    PRIMARY KEY (tenant_id, fsa_id, change_id)
);

-- ===== sql/024_refusals.sql
-- sms.refusals: every delta a policy refused (sms.apply_ops), with who sent it, in which lineage,
-- at which AML level, what it would have done and the rules it broke. A refused delta is never in
-- the delta log and uses no version; this is where reports find it. Append-only.
CREATE TABLE sms.refusals (
    tenant_id  text        NOT NULL,
    fsa_id     text        NOT NULL,
    refusal_id uuid        NOT NULL DEFAULT gen_random_uuid(),
    refused_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    version    bigint      NOT NULL,   -- the state's version when it was refused
    delta_id   uuid,
    actor      text,
    lineage_id text,
    trace_id   text,
    aml_level  integer,
    meta       jsonb       NOT NULL,
    ops        jsonb       NOT NULL,
    violations jsonb       NOT NULL,   -- [{"path", "rule", "value", "limit", "message"}, ...]
    PRIMARY KEY (tenant_id, fsa_id, refusal_id)
);
CREATE INDEX refusals_by_time ON sms.refusals (tenant_id, refused_at);

-- ===== sql/025_api_keys.sql
-- sms.api_keys: the API keys (DESIGN §10). A key is shown once, when it is made; only the SHA-256
-- of the whole key is kept. A key names the tenants it may touch (a state of any other tenant is a
-- 404 to it), its scopes (read < write < admin), optionally the actor its deltas are written as,
-- the highest AML level it may claim, its rate limit and its expiry. Revoked keys stay, for the
-- record. Keys are not tenant data (one key may name several tenants): the service's role reads
-- them only through the functions sms.authenticate, sms.list_keys, sms.create_key and
-- sms.revoke_key. Once any key exists, every request needs one.
CREATE TABLE sms.api_keys (
    key_id      text        NOT NULL,           -- the key's public id, e.g. k_5Tq9…
    secret_hash bytea       NOT NULL,           -- sha256 of the whole key
    tenants     text[]      NOT NULL,
    scopes      text[]      NOT NULL,           -- read, write, admin (each implies the ones before)
    actor       text,                           -- deltas made with the key are written as this actor
    aml_level   integer,                        -- the highest AML level a request may claim
    rate_limit  double precision,               -- requests per second (NULL: the service's default)
    label       text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    PRIMARY KEY (key_id),
    UNIQUE (secret_hash)
);

-- ===== sql/026_rate_buckets.sql
-- sms.rate_buckets: one token bucket per API key, shared by every process of the service
-- (sms.take_tokens). UNLOGGED: a bucket is worth nothing after a crash, and refilling it must not
-- cost WAL.
CREATE UNLOGGED TABLE sms.rate_buckets (
    key_id     text             NOT NULL,
    tokens     double precision NOT NULL,
    updated_at timestamptz      NOT NULL,
    PRIMARY KEY (key_id)
);

-- ===== sql/027_audit_append_only.sql
-- sms.policy_changes and sms.refusals are records for reports: append-only, like the delta log.
CREATE TRIGGER policy_changes_append_only
    BEFORE UPDATE OR DELETE ON sms.policy_changes
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER policy_changes_no_truncate
    BEFORE TRUNCATE ON sms.policy_changes
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER refusals_append_only
    BEFORE UPDATE OR DELETE ON sms.refusals
    FOR EACH ROW EXECUTE FUNCTION sms.refuse_log_change();

CREATE TRIGGER refusals_no_truncate
    BEFORE TRUNCATE ON sms.refusals
    FOR EACH STATEMENT EXECUTE FUNCTION sms.refuse_log_change();

-- ===== sql/036_aml_level.sql
-- sms.aml_level(meta): the AML level a delta is applied at, from its metadata (meta.aml_level: the
-- service puts the level of the request's key there, or the lower one the request claimed); NULL
-- when none is given or it is no whole number. Policies treat NULL as level 0.
CREATE OR REPLACE FUNCTION sms.aml_level(p_meta jsonb) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN p_meta ->> 'aml_level' ~ '^\s*-?[0-9]{1,9}\s*$' THEN (p_meta ->> 'aml_level')::integer END;
$$;

-- ===== sql/037_glob_like.sql
-- sms.glob_like(glob): a key glob (`*` any characters, `?` one) as a LIKE pattern, every other
-- character literal.
CREATE OR REPLACE FUNCTION sms.glob_like(p_glob text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT replace(replace(replace(replace(replace(p_glob, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%'), '?', '_');
$$;

-- ===== sql/038_check_rule.sql
-- sms.check_rule(rule): checks one policy rule and returns it normalised (DESIGN §10):
--   {"path": "resources.inventory.*",        a path glob: dotted keys, `*` and `?` within a key,
--                                             `**` as the last key for "this and everything below",
--                                             checked at each path a delta writes there (so with
--                                             `**` only required, immutable and max_change apply)
--    "min": n, "max": n,                     a number within bounds
--    "enum": [v, ...],                       one of these values
--    "type": "string|number|integer|boolean|object|array|null",
--    "required": true,                       may not be removed once it exists
--    "immutable": true,                      may not change once it exists
--    "max_change": n,                        may not change by more than n in one delta (a value
--                                             that is no number may not change at all)
--    "aml_below": n,                         the rule binds only actors whose AML level is below n
--    "name": "..."}                          for messages and reports
-- A rule needs a path and at least one of min, max, enum, type, required, immutable, max_change.
-- Raises SM012 (invalid policy) naming what is wrong.
CREATE OR REPLACE FUNCTION sms.check_rule(p_rule jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_path  text := p_rule ->> 'path';
    v_keys  text[];
    v_extra text;
BEGIN
    IF jsonb_typeof(p_rule) IS DISTINCT FROM 'object' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a rule is a JSON object with a path and constraints';
    END IF;
    SELECT string_agg(k, ', ') INTO v_extra FROM jsonb_object_keys(p_rule) k
     WHERE k NOT IN ('path', 'min', 'max', 'enum', 'type', 'required', 'immutable', 'max_change', 'aml_below', 'name');
    IF v_extra IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('unknown rule field(s) %s (known: path, min, max, enum, type, required, immutable, '
                             'max_change, aml_below, name)', v_extra);
    END IF;
    IF jsonb_typeof(p_rule -> 'path') IS DISTINCT FROM 'string' OR length(v_path) NOT BETWEEN 1 AND 512 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a rule needs a path: a string of 1 to 512 characters';
    END IF;
    BEGIN
        v_keys := sms.parse_path(v_path);
    EXCEPTION WHEN SQLSTATE 'SM001' OR SQLSTATE 'SM006' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('invalid rule path "%s": keys are separated by '
            'single dots and must not be empty; `\.` is a literal dot', left(v_path, 200));
    END;
    IF '**' = ANY (v_keys[1:cardinality(v_keys) - 1]) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('invalid rule path "%s": ** may only be the last key', left(v_path, 200));
    END IF;
    IF v_keys[cardinality(v_keys)] = '**' AND p_rule ?| ARRAY['min', 'max', 'enum', 'type'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": min, max, enum and type need a path to values (use * for each key), '
                             'not **, which also matches the objects that hold them', left(v_path, 200));
    END IF;
    IF NOT p_rule ?| ARRAY['min', 'max', 'enum', 'type', 'required', 'immutable', 'max_change'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('the rule for "%s" constrains nothing: give min, '
            'max, enum, type, required, immutable or max_change', left(v_path, 200));
    END IF;
    IF (p_rule ? 'min' AND jsonb_typeof(p_rule -> 'min') <> 'number')
       OR (p_rule ? 'max' AND jsonb_typeof(p_rule -> 'max') <> 'number')
       OR (p_rule ? 'max_change' AND (jsonb_typeof(p_rule -> 'max_change') <> 'number'
                                      OR (p_rule ->> 'max_change')::numeric < 0)) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": min and max take numbers, max_change a number of at least 0',
                             left(v_path, 200));
    END IF;
    IF p_rule ? 'min' AND p_rule ? 'max' AND (p_rule ->> 'min')::numeric > (p_rule ->> 'max')::numeric THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('the rule for "%s": min is above max', left(v_path, 200));
    END IF;
    IF p_rule ? 'enum' AND (jsonb_typeof(p_rule -> 'enum') <> 'array' OR jsonb_array_length(p_rule -> 'enum')
                            NOT BETWEEN 1 AND 1000) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": enum takes an array of 1 to 1000 values', left(v_path, 200));
    END IF;
    IF p_rule ? 'type' AND NOT coalesce(p_rule ->> 'type' = ANY
            (ARRAY['string', 'number', 'integer', 'boolean', 'object', 'array', 'null']), false) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = format('the rule for "%s": type is one of string, number, '
            'integer, boolean, object, array, null', left(v_path, 200));
    END IF;
    IF (p_rule ? 'required' AND p_rule -> 'required' <> 'true')
       OR (p_rule ? 'immutable' AND p_rule -> 'immutable' <> 'true') THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": required and immutable take true', left(v_path, 200));
    END IF;
    IF p_rule ? 'aml_below' AND (jsonb_typeof(p_rule -> 'aml_below') <> 'number'
                                 OR p_rule ->> 'aml_below' !~ '^[0-9]{1,3}$'
                                 OR (p_rule ->> 'aml_below')::integer NOT BETWEEN 1 AND 100) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": aml_below takes a whole number from 1 to 100', left(v_path, 200));
    END IF;
    IF p_rule ? 'name' AND (jsonb_typeof(p_rule -> 'name') <> 'string' OR length(p_rule ->> 'name') > 200) THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = format('the rule for "%s": name takes a string of up to 200 characters', left(v_path, 200));
    END IF;
    RETURN p_rule;
END;
$$;

-- ===== sql/039_policy_anchor.sql
-- sms.policy_anchor(keys): a rule path's literal leading keys as a dotted path ('' when its first
-- key is a glob): the index key under which sms.policy_targets finds the rules a path may concern.
CREATE OR REPLACE FUNCTION sms.policy_anchor(p_keys text[]) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(sms.format_path(p_keys[1:(SELECT coalesce(min(n) - 1, cardinality(p_keys))
                                                 FROM unnest(p_keys) WITH ORDINALITY u(k, n)
                                                WHERE k ~ '[*?]')]), '');
$$;

-- ===== sql/042_policy_relation.sql
-- sms.policy_relation(rule_keys, path): how a rule's path glob concerns a delta's path, or NULL
-- when it does not:
--   'exact' — the glob matches the path, or a `**` glob matches it or an ancestor of it: the value
--             at the path itself is checked (base = the path). So `config.**` with immutable keeps
--             every value under config that exists, and lets new keys be added beside them;
--   'below' — the glob matches paths under it: the values under the path that match `rest` are
--             checked (base = the path);
--   'above' — the glob matches an ancestor (base): a change under it changes that ancestor.
CREATE OR REPLACE FUNCTION sms.policy_relation(p_rule text[], p_path text[],
                                               OUT relation text, OUT base text[], OUT rest text[])
LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE AS $$
DECLARE
    v_deep boolean := p_rule[cardinality(p_rule)] = '**';
    v_core text[]  := CASE WHEN v_deep THEN p_rule[1:cardinality(p_rule) - 1] ELSE p_rule END;
    v_n    integer := cardinality(p_path);
    v_k    integer := cardinality(v_core);
BEGIN
    FOR i IN 1 .. least(v_k, v_n) LOOP
        IF NOT (p_path[i] = v_core[i] OR (v_core[i] ~ '[*?]' AND p_path[i] LIKE sms.glob_like(v_core[i]))) THEN
            RETURN;
        END IF;
    END LOOP;
    IF v_k > v_n THEN
        relation := 'below';
        base := p_path;
        rest := v_core[v_n + 1:] || CASE WHEN v_deep THEN ARRAY['**'] ELSE '{}'::text[] END;
    ELSIF v_k = v_n OR v_deep THEN
        relation := 'exact';
        base := p_path;
        rest := '{}';
    ELSE
        relation := 'above';
        base := p_path[1:v_k];
        rest := '{}';
    END IF;
END;
$$;

-- ===== sql/043_glob_paths.sql
-- sms.glob_paths(value, rest): the key paths inside a JSON value that the glob keys `rest` match
-- ({} is the value itself; a last `**` stops where it stands: the whole subtree is the value there).
CREATE OR REPLACE FUNCTION sms.glob_paths(p_value jsonb, p_rest text[]) RETURNS SETOF text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_key text;
BEGIN
    IF cardinality(p_rest) = 0 OR p_rest[1] = '**' THEN
        RETURN NEXT '{}'::text[];
        RETURN;
    END IF;
    IF jsonb_typeof(p_value) IS DISTINCT FROM 'object' THEN
        RETURN;
    END IF;
    FOR v_key IN
        SELECT k FROM jsonb_object_keys(p_value) k
         WHERE CASE WHEN p_rest[1] ~ '[*?]' THEN k LIKE sms.glob_like(p_rest[1]) ELSE k = p_rest[1] END
    LOOP
        RETURN QUERY SELECT v_key || sub FROM sms.glob_paths(p_value -> v_key, p_rest[2:]) sub;
    END LOOP;
END;
$$;

-- ===== sql/044_rule_violations.sql
-- sms.rule_violations(rule, path, old, new, aml_level): what one rule says of the change of the
-- value at `path` from `old` to `new` (NULL: absent), as violations
-- {"path", "rule", "value", "limit", "message"[, "name"][, "aml_level", "aml_below"]}. An absent
-- value passes min, max, enum and type (use required); an AML rule's message names the level.
CREATE OR REPLACE FUNCTION sms.rule_violations(p_rule jsonb, p_path text, p_old jsonb, p_new jsonb,
                                               p_aml_level integer) RETURNS SETOF jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_type   text := jsonb_typeof(p_new);
    v_prefix text := CASE WHEN p_rule ? 'aml_below'
                          THEN format('AML level %s is below %s: ', coalesce(p_aml_level, 0), p_rule ->> 'aml_below')
                          ELSE '' END;
    v_change numeric;
    v_found  record;
BEGIN
    FOR v_found IN
        SELECT * FROM (VALUES
            ('min', p_rule -> 'min',
             CASE WHEN NOT p_rule ? 'min' OR p_new IS NULL THEN NULL
                  WHEN v_type <> 'number' THEN format('"%s" would be %s, not a number (at least %s)', p_path,
                                                      sms.brief(p_new), p_rule -> 'min')
                  WHEN p_new::numeric < (p_rule ->> 'min')::numeric
                  THEN format('"%s" would be %s, below the minimum %s', p_path, p_new, p_rule -> 'min') END),
            ('max', p_rule -> 'max',
             CASE WHEN NOT p_rule ? 'max' OR p_new IS NULL THEN NULL
                  WHEN v_type <> 'number' THEN format('"%s" would be %s, not a number (at most %s)', p_path,
                                                      sms.brief(p_new), p_rule -> 'max')
                  WHEN p_new::numeric > (p_rule ->> 'max')::numeric
                  THEN format('"%s" would be %s, above the maximum %s', p_path, p_new, p_rule -> 'max') END),
            ('enum', p_rule -> 'enum',
             CASE WHEN p_rule ? 'enum' AND p_new IS NOT NULL
                       AND NOT EXISTS (SELECT FROM jsonb_array_elements(p_rule -> 'enum') e WHERE e = p_new)
                  THEN format('"%s" would be %s, not one of %s', p_path, sms.brief(p_new),
                              sms.brief(p_rule -> 'enum')) END),
            ('type', p_rule -> 'type',
             CASE WHEN p_rule ? 'type' AND p_new IS NOT NULL
                       AND v_type <> p_rule ->> 'type'
                       AND NOT (p_rule ->> 'type' = 'integer' AND v_type = 'number'
                                AND p_new::numeric = trunc(p_new::numeric))
                  THEN format('"%s" would be %s, not of type %s', p_path,
                              CASE WHEN v_type IN ('object', 'array') THEN 'an ' || v_type ELSE sms.brief(p_new) END,
                              p_rule ->> 'type') END),
            ('required', 'true'::jsonb,
             CASE WHEN p_rule ? 'required' AND p_old IS NOT NULL AND p_new IS NULL
                  THEN format('"%s" is required and may not be removed', p_path) END),
            ('immutable', 'true'::jsonb,
             CASE WHEN p_rule ? 'immutable' AND p_old IS NOT NULL AND p_new IS DISTINCT FROM p_old
                  THEN format('"%s" is immutable once set', p_path) END)
        ) v(rule, lim, message)
        WHERE message IS NOT NULL
    LOOP
        RETURN NEXT jsonb_strip_nulls(jsonb_build_object(
            'path', p_path, 'rule', v_found.rule, 'value', p_new, 'limit', v_found.lim,
            'message', v_prefix || v_found.message, 'name', p_rule -> 'name'))
            || CASE WHEN p_rule ? 'aml_below' THEN jsonb_build_object('aml_level', coalesce(p_aml_level, 0),
                                                                     'aml_below', p_rule -> 'aml_below')
                    ELSE '{}' END;
    END LOOP;
    IF p_rule ? 'max_change' AND p_new IS DISTINCT FROM p_old THEN
        -- numbers change by their difference (absent counts as 0); any other change is unbounded
        IF coalesce(jsonb_typeof(p_old), 'number') = 'number' AND coalesce(v_type, 'number') = 'number' THEN
            v_change := coalesce(p_new::numeric, 0) - coalesce(p_old::numeric, 0);
        END IF;
        IF v_change IS NULL OR abs(v_change) > (p_rule ->> 'max_change')::numeric THEN
            RETURN NEXT jsonb_strip_nulls(jsonb_build_object(
                'path', p_path, 'rule', 'max_change', 'value', to_jsonb(v_change), 'limit', p_rule -> 'max_change',
                'name', p_rule -> 'name',
                'message', v_prefix || CASE WHEN v_change IS NULL
                    THEN format('"%s" may change by at most %s in one delta, and this change is not numeric',
                                p_path, p_rule -> 'max_change')
                    ELSE format('"%s" would change by %s, more than %s in one delta', p_path, v_change,
                                p_rule -> 'max_change') END))
                || CASE WHEN p_rule ? 'aml_below' THEN jsonb_build_object('aml_level', coalesce(p_aml_level, 0),
                                                                         'aml_below', p_rule -> 'aml_below')
                        ELSE '{}' END;
        END IF;
    END IF;
END;
$$;

-- ===== sql/045_policy_violations.sql
-- sms.policy_violations(targets, before, after, aml_level): the violations of a delta's policy
-- targets (sms.policy_targets) given the values at their bases before and after the delta
-- (sms.policy_values); NULL when there are none. Only values the delta changed are checked, so a
-- value that broke a rule before the rule existed never blocks an unrelated delta.
CREATE OR REPLACE FUNCTION sms.policy_violations(p_targets jsonb, p_before jsonb, p_after jsonb,
                                                 p_aml_level integer) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    v_target jsonb;
    v_base   text[];
    v_at     text;
    v_old    jsonb;
    v_new    jsonb;
    v_rest   text[];
    v_inner  text[];
    v_found  jsonb := '[]';
BEGIN
    FOR v_target IN SELECT value FROM jsonb_array_elements(p_targets) LOOP
        v_base := ARRAY(SELECT jsonb_array_elements_text(v_target -> 'base'));
        v_at := sms.format_path(v_base);
        v_old := p_before -> v_at;
        v_new := p_after -> v_at;
        CONTINUE WHEN v_old IS NOT DISTINCT FROM v_new;
        v_rest := ARRAY(SELECT jsonb_array_elements_text(v_target -> 'rest'));
        FOR v_inner IN SELECT sms.glob_paths(v_old, v_rest) UNION SELECT sms.glob_paths(v_new, v_rest) LOOP
            CONTINUE WHEN v_old #> v_inner IS NOT DISTINCT FROM v_new #> v_inner;
            v_found := v_found || coalesce((
                SELECT jsonb_agg(v) FROM sms.rule_violations(v_target -> 'rule', sms.format_path(v_base || v_inner),
                                                             v_old #> v_inner, v_new #> v_inner, p_aml_level) v), '[]');
        END LOOP;
    END LOOP;
    RETURN (SELECT jsonb_agg(v ORDER BY v ->> 'path', v ->> 'rule', v::text) FROM (
                SELECT DISTINCT v FROM jsonb_array_elements(v_found) v) d);
END;
$$;

-- ===== sql/054_current_version.sql
-- sms.current_version(tenant, fsa): the state's version, 0 for a state never written.
CREATE OR REPLACE FUNCTION sms.current_version(p_tenant_id text, p_fsa_id text) RETURNS bigint
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id), 0);
$$;

-- ===== sql/066_policy_targets.sql
-- sms.policy_targets(tenant, fsa, ops, aml_level): the policy rules that concern a delta's ops,
-- each with how the rule's glob relates to the op's path (sms.policy_relation); NULL when none
-- does. The state's own rules and the tenant's defaults (fsa_id ''), a state's rule on a path
-- replacing the defaults on that path; AML rules only when the level is below theirs (no level
-- counts as 0). A rule above an op's path that only says `required` is left out: a change below a
-- value never removes it.
-- Cost: with no rule for the state or its tenant (most states), two key probes. Otherwise one key
-- search per op, (state or defaults) and prefix of its path, plus one for the rules below it,
-- however many rules there are on other paths; rules whose path starts with a glob (anchor '') are
-- looked at for every op. Each search is a LATERAL subquery kept apart (OFFSET 0), so that no
-- estimate — of a table without statistics, say — turns it into a scan of the tenant's rules; and
-- the searches are planned once per session, not per delta (a generic plan), and never compiled
-- (JIT): their estimates are high for what they read.
CREATE OR REPLACE FUNCTION sms.policy_targets(p_tenant_id text, p_fsa_id text, p_ops jsonb, p_aml_level integer)
RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE
SET plan_cache_mode = force_generic_plan
SET jit = off
AS $$
BEGIN
    IF NOT EXISTS (SELECT FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id)
       AND NOT EXISTS (SELECT FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id = '') THEN
        RETURN NULL;
    END IF;
    RETURN (
        WITH ops AS (
            -- each op's path and its prefixes, as dotted paths (sms.format_path, written out: a
            -- function call per prefix costs more than the whole search)
            SELECT o.n, p.keys AS op_keys, p.prefixes[cardinality(p.prefixes)] AS dotted, p.prefixes
              FROM jsonb_array_elements(p_ops) WITH ORDINALITY o(op, n),
                   LATERAL (SELECT array_agg(k ORDER BY i) AS keys,
                                   '{""}' || array_agg(prefix COLLATE "C" ORDER BY i) AS prefixes
                              FROM (SELECT k, i, string_agg(replace(replace(k, '\', '\\'), '.', '\.'), '.')
                                                 OVER (ORDER BY i) AS prefix
                                      FROM jsonb_array_elements_text(o.op -> 'path') WITH ORDINALITY e(k, i)) e) p
        ), candidates AS (
            SELECT ops.n, ops.op_keys, r.*
              FROM ops, unnest(ARRAY['', p_fsa_id]) f(fsa_id), unnest(ops.prefixes) a(anchor),
                   LATERAL (SELECT * FROM sms.policies r
                             WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id AND r.anchor = a.anchor
                            OFFSET 0) r
            UNION ALL
            SELECT ops.n, ops.op_keys, r.*
              FROM ops, unnest(ARRAY['', p_fsa_id]) f(fsa_id),
                   LATERAL (SELECT * FROM sms.policies r
                             WHERE r.tenant_id = p_tenant_id AND r.fsa_id = f.fsa_id
                               AND r.anchor > ops.dotted || '.' AND r.anchor < ops.dotted || '/'
                            OFFSET 0) r
        )
        SELECT jsonb_agg(jsonb_build_object('rule', c.rule, 'relation', rel.relation, 'base', to_jsonb(rel.base),
                                            'rest', to_jsonb(rel.rest))
                         ORDER BY c.n, c.fsa_id, c.rule_no)
          FROM candidates c, LATERAL sms.policy_relation(c.keys, c.op_keys) rel
         WHERE rel.relation IS NOT NULL
           AND NOT (rel.relation = 'above'
                    AND NOT c.rule ?| ARRAY['min', 'max', 'enum', 'type', 'immutable', 'max_change'])
           AND (NOT c.rule ? 'aml_below' OR coalesce(p_aml_level, 0) < (c.rule ->> 'aml_below')::integer)
           -- a state's own rule on a path replaces the defaults on it (it has the same anchor)
           AND (c.fsa_id <> '' OR NOT EXISTS (SELECT FROM candidates s
                                               WHERE s.n = c.n AND s.fsa_id <> '' AND s.path = c.path))
    );
END;
$$;

-- ===== sql/067_policy_values.sql
-- sms.policy_values(tenant, fsa, targets): {dotted base path: its current value} for the bases of
-- a delta's policy targets (absent values are left out); read before and after the delta is
-- written. One or two entries per base; a whole collection only when the base is one.
CREATE OR REPLACE FUNCTION sms.policy_values(p_tenant_id text, p_fsa_id text, p_targets jsonb) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(sms.format_path(b.keys), v) FILTER (WHERE v IS NOT NULL), '{}')
      FROM (SELECT DISTINCT ARRAY(SELECT jsonb_array_elements_text(t -> 'base')) AS keys
              FROM jsonb_array_elements(p_targets) t) b,
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, b.keys) v;
$$;

-- ===== sql/068_append_delta.sql
-- sms.append_delta(...): the engine behind sms.apply_ops: under the state's lock it checks the
-- idempotency key, the expected version and the preconditions, writes the ops, appends the log row,
-- takes a snapshot when one is due and notifies. With policy targets (sms.policy_targets) it reads
-- the guarded values before and after writing and raises SM011 when the delta breaks a rule, so
-- that sms.apply_ops can undo it and record the refusal. Call sms.apply_ops, never this.
-- Guarantees (for sms.apply_ops):
--   * atomic: the entries, the log row and the NOTIFY commit together or not at all;
--   * serial per state: sms.lock_state serialises writers, versions are gap-free (v = previous + 1);
--   * idempotent: a known delta_id returns the first result and applies nothing (SM005 if the
--     same id comes with different ops);
--   * optimistic concurrency: p_expected_version and the preconditions are checked under the lock
--     (SM003 / SM004, reporting the current version and values);
--   * a type mismatch (SM002) applies nothing;
--   * exactly one NOTIFY on channel sms_changes with ids only (< 1 KB), unless the setting
--     sms.notify is 'off';
--   * every sms.snapshot_every() versions, a snapshot (sms.take_snapshot).
CREATE OR REPLACE FUNCTION sms.append_delta(
    p_tenant_id        text,
    p_fsa_id           text,
    p_ops              jsonb,
    p_expect           jsonb  DEFAULT '[]',
    p_actor            text   DEFAULT NULL,
    p_lineage_id       text   DEFAULT NULL,
    p_delta_id         uuid   DEFAULT NULL,
    p_expected_version bigint DEFAULT NULL,
    p_meta             jsonb  DEFAULT '{}',
    p_trace_id         text   DEFAULT NULL,
    p_parent_id        text   DEFAULT NULL,
    p_targets          jsonb  DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_ops         jsonb := p_ops;
    v_version     bigint;
    v_prior       sms.deltas;
    v_failed      jsonb;
    v_op          jsonb;
    v_entries     bigint := 0;
    v_bytes       bigint := 0;
    v_paths       text[];
    v_collections text[];
    v_payload     text;
    v_before      jsonb;
    v_violations  jsonb;
BEGIN
    v_version := sms.lock_state(p_tenant_id, p_fsa_id);

    IF p_delta_id IS NOT NULL THEN
        SELECT * INTO v_prior FROM sms.deltas
         WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id AND delta_id = p_delta_id;
        IF FOUND THEN
            IF v_prior.ops <> v_ops THEN
                RAISE EXCEPTION USING ERRCODE = 'SM005',
                    MESSAGE = format('delta_id %s was already used for a different delta (version %s)',
                                     p_delta_id, v_prior.version),
                    DETAIL = jsonb_build_object('delta_id', p_delta_id, 'version', v_prior.version)::text;
            END IF;
            RETURN jsonb_build_object('success', true, 'version', v_prior.version, 'delta_id', v_prior.delta_id,
                                      'changed', to_jsonb(v_prior.paths), 'duplicate', true);
        END IF;
    END IF;

    IF p_expected_version IS NOT NULL AND p_expected_version <> v_version THEN
        RAISE EXCEPTION USING ERRCODE = 'SM003',
            MESSAGE = format('expected version %s, but the state is at version %s', p_expected_version, v_version),
            DETAIL = jsonb_build_object('current_version', v_version,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, v_ops))::text;
    END IF;

    SELECT jsonb_agg(sms.format_path(k)) INTO v_failed
      FROM jsonb_array_elements(coalesce(p_expect, '[]')) e,
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(e -> 'path'))) p(k),
           LATERAL sms.read_path(p_tenant_id, p_fsa_id, k) cur
     WHERE CASE WHEN e ? 'exists' THEN (cur IS NOT NULL) <> (e ->> 'exists')::boolean
                ELSE cur IS DISTINCT FROM e -> 'value' END;
    IF v_failed IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'SM004',
            MESSAGE = format('$expect failed at %s', (SELECT string_agg(format('"%s"', f), ', ')
                                                       FROM jsonb_array_elements_text(v_failed) f)),
            DETAIL = jsonb_build_object('current_version', v_version, 'failed', v_failed,
                                        'current', sms.read_paths(p_tenant_id, p_fsa_id, p_expect))::text;
    END IF;

    IF p_targets IS NOT NULL THEN
        v_before := sms.policy_values(p_tenant_id, p_fsa_id, p_targets);
    END IF;
    v_version := v_version + 1;
    FOR v_op IN SELECT value FROM jsonb_array_elements(v_ops) LOOP
        SELECT v_entries + w.entry_delta, v_bytes + w.byte_delta INTO v_entries, v_bytes
          FROM sms.write_op(p_tenant_id, p_fsa_id, v_version, v_op) w;
    END LOOP;
    IF p_targets IS NOT NULL THEN
        v_violations := sms.policy_violations(p_targets, v_before, sms.policy_values(p_tenant_id, p_fsa_id, p_targets),
                                              sms.aml_level(p_meta));
        IF v_violations IS NOT NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'SM011',
                MESSAGE = 'policy violation: ' || (v_violations -> 0 ->> 'message')
                          || CASE WHEN jsonb_array_length(v_violations) > 1
                                  THEN format(' (and %s more)', jsonb_array_length(v_violations) - 1) ELSE '' END,
                DETAIL = jsonb_build_object('violations', v_violations, 'current_version', v_version - 1)::text;
        END IF;
    END IF;

    SELECT array_agg(sms.format_path(k) ORDER BY n), array_agg(DISTINCT k[1])
      INTO v_paths, v_collections
      FROM jsonb_array_elements(v_ops) WITH ORDINALITY o(op, n),
           LATERAL (SELECT ARRAY(SELECT jsonb_array_elements_text(op -> 'path'))) p(k);

    INSERT INTO sms.deltas (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, parent_id,
                            meta, ops, paths, collections)
    VALUES (p_tenant_id, p_fsa_id, v_version, coalesce(p_delta_id, gen_random_uuid()), p_actor, p_lineage_id,
            p_trace_id, p_parent_id, coalesce(p_meta, '{}'), v_ops, v_paths, v_collections)
    RETURNING * INTO v_prior;

    UPDATE sms.states
       SET version = v_version, updated_at = now(),
           entry_count = entry_count + v_entries, content_bytes = content_bytes + v_bytes
     WHERE tenant_id = p_tenant_id AND fsa_id = p_fsa_id;

    IF v_version % sms.snapshot_every() = 0 THEN
        PERFORM sms.take_snapshot(p_tenant_id, p_fsa_id, v_version);
    END IF;

    IF coalesce(current_setting('sms.notify', true), '') <> 'off' THEN
        v_payload := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                        'delta_id', v_prior.delta_id, 'actor', p_actor,
                                        'lineage_id', p_lineage_id, 'collections', to_jsonb(v_collections))::text;
        IF octet_length(v_payload) > 1000 THEN
            -- many or long collection names: send ids only; subscribers read the rest from the log
            v_payload := jsonb_build_object('tenant_id', p_tenant_id, 'fsa_id', p_fsa_id, 'version', v_version,
                                            'delta_id', v_prior.delta_id, 'truncated', true)::text;
        END IF;
        PERFORM pg_notify('sms_changes', v_payload);
    END IF;

    RETURN jsonb_build_object('success', true, 'version', v_version, 'delta_id', v_prior.delta_id,
                              'changed', to_jsonb(v_paths), 'duplicate', false);
END;
$$;

-- ===== sql/069_apply_ops.sql
-- sms.apply_ops(...): applies normalised ops and preconditions (see sms.normalize_delta) to the
-- state (tenant_id, fsa_id); the engine behind sms.apply_delta, sms.replace_state, sms.rollback and
-- sms.heartbeat, and what a replay of the log calls with each logged row's ops. Ops are trusted to
-- be normalised (as in sms.deltas.ops); use sms.apply_delta for anything else. Returns
-- {"success": true, "version", "delta_id", "changed": [paths], "duplicate"}, with every guarantee
-- of sms.append_delta (atomic, serial per state, gap-free versions, idempotent, one NOTIFY).
-- Policies (DESIGN §10): the rules that concern the ops' paths (sms.policy_targets, at the AML
-- level in meta.aml_level) are checked on the values the delta produces, in the same transaction.
-- A delta that breaks one is undone (a savepoint, taken only when some rule concerns it), uses no
-- version, is not logged and notifies nobody; it is recorded in sms.refusals, and the answer is
-- {"success": false, "refused": true, "error": "policy-violation", "message", "violations",
-- "version", "refusal_id"} — returned, not raised, so that the record of the refusal commits.
CREATE OR REPLACE FUNCTION sms.apply_ops(
    p_tenant_id        text,
    p_fsa_id           text,
    p_ops              jsonb,
    p_expect           jsonb  DEFAULT '[]',
    p_actor            text   DEFAULT NULL,
    p_lineage_id       text   DEFAULT NULL,
    p_delta_id         uuid   DEFAULT NULL,
    p_expected_version bigint DEFAULT NULL,
    p_meta             jsonb  DEFAULT '{}',
    p_trace_id         text   DEFAULT NULL,
    p_parent_id        text   DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_targets jsonb;
    v_message text;
    v_detail  jsonb;
    v_refusal sms.refusals;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('fsa_id', coalesce(p_fsa_id, '')),
            sms.check_id('actor', p_actor), sms.check_id('lineage_id', p_lineage_id),
            sms.check_id('trace_id', p_trace_id), sms.check_id('parent_id', p_parent_id);
    IF p_meta IS NOT NULL AND jsonb_typeof(p_meta) <> 'object' THEN
        PERFORM sms.raise_invalid('meta', 'meta must be a JSON object');
    END IF;

    v_targets := sms.policy_targets(p_tenant_id, p_fsa_id, p_ops, sms.aml_level(p_meta));
    IF v_targets IS NULL THEN
        RETURN sms.append_delta(p_tenant_id, p_fsa_id, p_ops, p_expect, p_actor, p_lineage_id, p_delta_id,
                                p_expected_version, p_meta, p_trace_id, p_parent_id);
    END IF;
    BEGIN
        RETURN sms.append_delta(p_tenant_id, p_fsa_id, p_ops, p_expect, p_actor, p_lineage_id, p_delta_id,
                                p_expected_version, p_meta, p_trace_id, p_parent_id, v_targets);
    EXCEPTION WHEN SQLSTATE 'SM011' THEN
        GET STACKED DIAGNOSTICS v_message = MESSAGE_TEXT, v_detail = PG_EXCEPTION_DETAIL;
    END;
    INSERT INTO sms.refusals (tenant_id, fsa_id, version, delta_id, actor, lineage_id, trace_id, aml_level, meta, ops,
                              violations)
    VALUES (p_tenant_id, p_fsa_id, (v_detail ->> 'current_version')::bigint, p_delta_id, p_actor, p_lineage_id, p_trace_id,
            sms.aml_level(p_meta), coalesce(p_meta, '{}'), p_ops, v_detail -> 'violations')
    RETURNING * INTO v_refusal;
    RETURN jsonb_build_object('success', false, 'refused', true, 'error', 'policy-violation', 'message', v_message,
                              'violations', v_refusal.violations, 'version', v_refusal.version,
                              'refusal_id', v_refusal.refusal_id);
END;
$$;

-- ===== sql/096_set_policy.sql
-- sms.set_policy(tenant, fsa, rules, actor): replaces the rule set of a state — or, with fsa NULL,
-- the tenant's defaults — by `rules`, a JSON array of rules (each checked by sms.check_rule; []
-- removes them all), records the change in sms.policy_changes and returns the rules now set.
-- Changes of one rule set are serialised. At most 10,000 rules per set.
CREATE OR REPLACE FUNCTION sms.set_policy(p_tenant_id text, p_fsa_id text, p_rules jsonb,
                                          p_actor text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_fsa   text := coalesce(p_fsa_id, '');
    v_rules jsonb;
BEGIN
    PERFORM sms.check_id('tenant_id', coalesce(p_tenant_id, '')), sms.check_id('actor', p_actor);
    IF p_fsa_id IS NOT NULL THEN
        PERFORM sms.check_id('fsa_id', p_fsa_id);
    END IF;
    IF jsonb_typeof(p_rules) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'rules are a JSON array of rule objects';
    END IF;
    IF jsonb_array_length(p_rules) > 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM006',
            MESSAGE = format('%s rules; at most 10000 are allowed per state or tenant', jsonb_array_length(p_rules));
    END IF;
    SELECT coalesce(jsonb_agg(sms.check_rule(r) ORDER BY n), '[]') INTO v_rules
      FROM jsonb_array_elements(p_rules) WITH ORDINALITY x(r, n);
    PERFORM pg_advisory_xact_lock(hashtextextended(p_tenant_id, 29) # hashtextextended(v_fsa, 31));
    DELETE FROM sms.policies WHERE tenant_id = p_tenant_id AND fsa_id = v_fsa;
    INSERT INTO sms.policies (tenant_id, fsa_id, rule_no, path, keys, anchor, rule)
    SELECT p_tenant_id, v_fsa, n, r ->> 'path', k, sms.policy_anchor(k), r
      FROM jsonb_array_elements(v_rules) WITH ORDINALITY x(r, n),
           LATERAL sms.parse_path(r ->> 'path') k;
    INSERT INTO sms.policy_changes (tenant_id, fsa_id, actor, rules) VALUES (p_tenant_id, v_fsa, p_actor, v_rules);
    RETURN v_rules;
END;
$$;

-- ===== sql/097_policies_of.sql
-- sms.policies_of(tenant, fsa): {"rules": [the state's own rules], "defaults": [the tenant's]},
-- each in the order they were set. With fsa NULL, "rules" are the tenant's defaults alone.
CREATE OR REPLACE FUNCTION sms.policies_of(p_tenant_id text, p_fsa_id text) RETURNS jsonb
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT jsonb_build_object(
        'rules', coalesce((SELECT jsonb_agg(rule ORDER BY rule_no) FROM sms.policies
                            WHERE tenant_id = p_tenant_id AND fsa_id = coalesce(p_fsa_id, '')), '[]'),
        'defaults', coalesce((SELECT jsonb_agg(rule ORDER BY rule_no) FROM sms.policies
                               WHERE tenant_id = p_tenant_id AND fsa_id = '' AND p_fsa_id IS NOT NULL), '[]'));
$$;

-- ===== sql/109_heartbeat.sql
-- sms.heartbeat(tenant, fsa, agent, ...): records agents_online.<agent> as the latest time the
-- agent was seen ($max of an ISO-8601 UTC timestamp, so late or concurrent heartbeats never move
-- it back). Touches only that entry, so cached summaries of other collections stay valid. The
-- delta's actor is the agent unless `actor` is given (the service gives the actor its API key
-- names); `meta` is kept with it like any write's (its aml_level is what policies see).
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

-- ===== sql/111_caller_tenants.sql
-- sms.caller_tenants(): whose keys the caller may manage. NULL (every tenant's) for the owner of
-- the schema's tables and superusers — SQL users and the `sms keys` command; for any other role
-- (the service) the tenants its transaction acts for (sms.act_for), or none.
CREATE OR REPLACE FUNCTION sms.caller_tenants() RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_has_role(session_user, (SELECT relowner FROM pg_class WHERE oid = 'sms.api_keys'::regclass),
                                 'USAGE')
                THEN NULL ELSE coalesce(sms.request_tenants(), '{}') END;
$$;

-- ===== sql/112_create_key.sql
-- sms.create_key(key_id, secret_hash, tenants, scopes, ...): records a new API key — its public id
-- and the SHA-256 of the key, which the caller made and shows once (the key itself never reaches
-- the database) — and returns it as sms.list_keys shows keys. Scopes are read, write and admin.
-- The service may only make keys for tenants its admin key names (sms.caller_tenants); SM013
-- otherwise. Raises SM012 for an invalid key.
CREATE OR REPLACE FUNCTION sms.create_key(p_key_id text, p_secret_hash bytea, p_tenants text[], p_scopes text[],
                                          p_actor text DEFAULT NULL, p_aml_level integer DEFAULT NULL,
                                          p_expires_at timestamptz DEFAULT NULL,
                                          p_rate_limit double precision DEFAULT NULL, p_label text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_key     sms.api_keys;
BEGIN
    IF p_key_id !~ '^k_[A-Za-z0-9]{8,40}$' OR octet_length(p_secret_hash) <> 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a key needs an id k_… and the SHA-256 of its secret';
    END IF;
    IF coalesce(cardinality(p_tenants), 0) NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'a key names 1 to 100 tenants';
    END IF;
    PERFORM sms.check_id('tenant_id', coalesce(t, '')) FROM unnest(p_tenants) t;
    PERFORM sms.check_id('actor', p_actor), sms.check_id('label', p_label);
    IF coalesce(cardinality(p_scopes), 0) = 0 OR NOT p_scopes <@ ARRAY['read', 'write', 'admin'] THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012', MESSAGE = 'scopes are one or more of read, write, admin';
    END IF;
    IF p_aml_level NOT BETWEEN 0 AND 100 OR p_rate_limit <= 0 OR p_rate_limit > 1e6 THEN
        RAISE EXCEPTION USING ERRCODE = 'SM012',
            MESSAGE = 'an AML level is 0 to 100, a rate limit above 0 and at most 1,000,000 requests per second';
    END IF;
    IF v_allowed IS NOT NULL AND NOT p_tenants <@ v_allowed THEN
        RAISE EXCEPTION USING ERRCODE = 'SM013',
            MESSAGE = 'a key may only be made for tenants of the key that makes it';
    END IF;
    INSERT INTO sms.api_keys (key_id, secret_hash, tenants, scopes, actor, aml_level, rate_limit, label, expires_at)
    VALUES (p_key_id, p_secret_hash, ARRAY(SELECT DISTINCT t FROM unnest(p_tenants) t ORDER BY t),
            ARRAY(SELECT s FROM unnest(ARRAY['read', 'write', 'admin']) s WHERE s = ANY (p_scopes)),
            p_actor, p_aml_level, p_rate_limit, p_label, p_expires_at)
    RETURNING * INTO v_key;
    RETURN to_jsonb(v_key) - 'secret_hash';
END;
$$;
REVOKE ALL ON FUNCTION sms.create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision, text)
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.create_key(text, bytea, text[], text[], text, integer, timestamptz, double precision,
                                         text) TO sms_api;

-- ===== sql/113_authenticate.sql
-- sms.authenticate(secret_hash): the API key with this SHA-256 (as sms.list_keys shows keys, with
-- its revocation and expiry for the caller to judge), or NULL when there is none.
CREATE OR REPLACE FUNCTION sms.authenticate(p_secret_hash bytea) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT to_jsonb(k) - 'secret_hash' || jsonb_build_object('expired', k.expires_at <= now())
      FROM sms.api_keys k WHERE k.secret_hash = p_secret_hash;
$$;
REVOKE ALL ON FUNCTION sms.authenticate(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.authenticate(bytea) TO sms_api;

-- ===== sql/114_list_keys.sql
-- sms.list_keys(): the API keys the caller may manage (sms.caller_tenants: every key for SQL
-- users, for the service those whose tenants its admin key names), oldest first, without hashes.
CREATE OR REPLACE FUNCTION sms.list_keys() RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(jsonb_agg(to_jsonb(k) - 'secret_hash' ORDER BY k.created_at, k.key_id), '[]')
      FROM sms.api_keys k, LATERAL (SELECT sms.caller_tenants() AS allowed) c
     WHERE c.allowed IS NULL OR k.tenants <@ c.allowed;
$$;
REVOKE ALL ON FUNCTION sms.list_keys() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.list_keys() TO sms_api;

-- ===== sql/115_revoke_key.sql
-- sms.revoke_key(key_id): revokes an API key from now on and returns it; SM010 (not found) when
-- there is no such key among those the caller may manage. Revoking twice keeps the first time.
CREATE OR REPLACE FUNCTION sms.revoke_key(p_key_id text) RETURNS jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_allowed text[] := sms.caller_tenants();
    v_key     sms.api_keys;
BEGIN
    UPDATE sms.api_keys SET revoked_at = coalesce(revoked_at, now())
     WHERE key_id = p_key_id AND (v_allowed IS NULL OR tenants <@ v_allowed)
    RETURNING * INTO v_key;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'SM010', MESSAGE = format('no API key %s', left(p_key_id, 60));
    END IF;
    RETURN to_jsonb(v_key) - 'secret_hash';
END;
$$;
REVOKE ALL ON FUNCTION sms.revoke_key(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.revoke_key(text) TO sms_api;

-- ===== sql/116_keys_exist.sql
-- sms.keys_exist(): whether any API key was ever made (revoked ones count). Until one is, the
-- service runs in protected mode (loopback clients only); from then on every request needs a key.
CREATE OR REPLACE FUNCTION sms.keys_exist() RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT FROM sms.api_keys);
$$;
REVOKE ALL ON FUNCTION sms.keys_exist() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.keys_exist() TO sms_api;

-- ===== sql/117_take_tokens.sql
-- sms.take_tokens(key_id, rate, burst, wanted): takes up to `wanted` tokens from the key's bucket,
-- which refills at `rate` per second up to `burst`, and returns how many it got and, when none,
-- after how many seconds one is there. The buckets are shared by every process of the service,
-- which takes tokens a few at a time. Callers of one bucket are serialised by its row. Only keys
-- that exist get a bucket.
CREATE OR REPLACE FUNCTION sms.take_tokens(p_key_id text, p_rate double precision, p_burst double precision,
                                           p_wanted integer, OUT granted integer, OUT retry_after double precision)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_now    timestamptz := clock_timestamp();
    v_bucket sms.rate_buckets;
    v_tokens double precision;
BEGIN
    INSERT INTO sms.rate_buckets (key_id, tokens, updated_at)
    SELECT p_key_id, p_burst, v_now WHERE EXISTS (SELECT FROM sms.api_keys WHERE key_id = p_key_id)
    ON CONFLICT (key_id) DO NOTHING;
    SELECT * INTO v_bucket FROM sms.rate_buckets WHERE key_id = p_key_id FOR UPDATE;
    IF NOT FOUND THEN
        granted := 0;
        RETURN;
    END IF;
    v_tokens := least(p_burst, v_bucket.tokens
                               + p_rate * greatest(0, extract(epoch FROM v_now - v_bucket.updated_at)));
    granted := least(p_wanted, floor(v_tokens))::integer;
    UPDATE sms.rate_buckets SET tokens = v_tokens - granted, updated_at = v_now WHERE key_id = p_key_id;
    IF granted = 0 THEN
        retry_after := (1 - v_tokens) / p_rate;
    END IF;
END;
$$;
REVOKE ALL ON FUNCTION sms.take_tokens(text, double precision, double precision, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION sms.take_tokens(text, double precision, double precision, integer) TO sms_api;

-- ===== sql/180_tenant_isolation.sql
-- Tenant isolation, the second wall (DESIGN §10): row-level security on every table, and on
-- every table that holds tenant data a policy that lets a transaction see and write only the rows
-- of the tenants it acts for (sms.request_tenants, set by sms.act_for from the request's API key).
-- Policies bind every role but the tables' owner: the service's role sms_api, which gets here only
-- the privileges the service needs; SQL users working as the owner see everything. The API keys
-- and the rate buckets have no policy: only the owner and the functions that run as it touch them.
-- (The tenants are read once per statement: `(SELECT …)` makes it an init plan, not a per-row call.)

ALTER TABLE sms.states ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.states USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.states TO sms_api;

ALTER TABLE sms.entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.entries USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.entries TO sms_api;

ALTER TABLE sms.deltas ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.deltas USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.deltas TO sms_api;

ALTER TABLE sms.entry_history ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.entry_history USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE ON sms.entry_history TO sms_api;

ALTER TABLE sms.snapshots ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.snapshots USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.snapshots TO sms_api;

ALTER TABLE sms.snapshot_entries ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.snapshot_entries USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.snapshot_entries TO sms_api;

ALTER TABLE sms.task_comments ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.task_comments USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.task_comments TO sms_api;

ALTER TABLE sms.member_counts ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.member_counts USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.member_counts TO sms_api;

ALTER TABLE sms.slice_aliases ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.slice_aliases USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.slice_aliases TO sms_api;

ALTER TABLE sms.summary_cache ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.summary_cache USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, UPDATE, DELETE ON sms.summary_cache TO sms_api;

ALTER TABLE sms.policies ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.policies USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT, DELETE ON sms.policies TO sms_api;

ALTER TABLE sms.policy_changes ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.policy_changes USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.policy_changes TO sms_api;

ALTER TABLE sms.refusals ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sms.refusals USING (tenant_id = ANY ((SELECT sms.request_tenants())::text[]));
GRANT SELECT, INSERT ON sms.refusals TO sms_api;

ALTER TABLE sms.api_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE sms.rate_buckets ENABLE ROW LEVEL SECURITY;
