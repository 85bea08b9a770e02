"""Scale-out on Citus (DESIGN §14): what `sms migrate --citus` does on a Citus coordinator, once the
migrations have run as on any PostgreSQL.

Every table that holds tenant data is distributed by tenant_id, co-located with sms.states, so a
tenant's rows all live on one node; the API keys (a key may name several tenants) are a reference
table, copied to every node; the rate buckets stay on the coordinator, where the service counts
requests. Every function whose first argument is the tenant is distributed by it, so that a bare
`SELECT sms.apply_delta(…)` runs on the tenant's node in one round trip (delegation) instead of
statement by statement from the coordinator.

The schema keeps itself distributable on any PostgreSQL (tests/test_distributable.py): every key
leads with tenant_id, no foreign key, no table-reading SQL function, nothing but immutable values
in an upsert's DO UPDATE, nothing that depends on one node's transaction ids or sequences.
Distributing is idempotent: a table or function already distributed is left as it is, so it can
run again after a migration adds a table or a function.
"""

from __future__ import annotations

import asyncpg

from app.db.queries import CALLS, is_citus

REFERENCE_TABLES = frozenset({"api_keys"})  # not one tenant's: on every node
COORDINATOR_TABLES = frozenset({"rate_buckets"})  # the service's request counts: unlogged, on the coordinator
ANCHOR = "states"  # what every tenant table is co-located with
# what the service calls bare in a transaction block (app/db/queries.py, Call): delegated there
# too, which pins the rest of such a transaction to the tenant's node
FORCE_DELEGATED = frozenset(call.function for call in CALLS)

_TABLES = """
SELECT c.relname, p.logicalrelid IS NOT NULL AS distributed
  FROM pg_catalog.pg_class c
  LEFT JOIN pg_dist_partition p ON p.logicalrelid = c.oid
 WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p') AND NOT c.relispartition
 ORDER BY c.relname <> $1, c.relname
"""

# functions whose first argument is the tenant, not yet distributed as they should be
_FUNCTIONS = """
SELECT p.oid::regprocedure::text AS signature, p.proargnames[1] AS argument, p.proname = ANY ($1) AS forced
  FROM pg_catalog.pg_proc p
 WHERE p.pronamespace = 'sms'::regnamespace AND p.prokind = 'f' AND p.pronargs > 0
   AND p.proargnames[1] = 'p_tenant_id' AND p.proargtypes[0] = 'text'::regtype
   AND NOT EXISTS (SELECT FROM pg_dist_object o
                    WHERE o.classid = 'pg_proc'::regclass AND o.objid = p.oid
                      AND o.distribution_argument_index IS NOT NULL
                      AND coalesce(o.force_delegation, false) = (p.proname = ANY ($1)))
 ORDER BY 1
"""


class NotCitus(Exception):
    """The database is not a Citus coordinator."""


async def distribute(conn: asyncpg.Connection, role: str, settings: dict[str, str]) -> dict[str, list[str]]:
    """Distributes what is not distributed yet (see the module's docstring) and gives the service's
    `role` its session `settings` (session_settings) as the role's own, which Citus sets on every
    node: a delegated call runs in a session of the tenant's node, never the service's. Returns
    what it did. (Not citus.propagate_set_commands: the service sets that in its own sessions on
    the coordinator; in a worker's, Citus 13.2 sends a propagated SET LOCAL on to another worker
    in a transaction it has begun already, and fails.)"""
    if not await is_citus(conn):
        raise NotCitus("the citus extension is not installed in this database: it is not a Citus coordinator")
    done: dict[str, list[str]] = {"distributed": [], "reference": [], "functions": [], "settings": []}
    async with conn.transaction():
        await _prepare(conn)
        # the append-only logs and the feed's position keep their triggers on the shards: each fires
        # on the tenant's node and reads only that tenant's co-located rows
        await conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
        await conn.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
        for table, distributed in await conn.fetch(_TABLES, ANCHOR):
            if distributed or table in COORDINATOR_TABLES:
                continue
            name = f"sms.{table}"
            if table in REFERENCE_TABLES:
                await conn.execute("SELECT create_reference_table($1)", name)
                done["reference"].append(table)
            elif table == ANCHOR:
                await conn.execute("SELECT create_distributed_table($1, 'tenant_id')", name)
                done["distributed"].append(table)
            else:
                await conn.execute(
                    "SELECT create_distributed_table($1, 'tenant_id', colocate_with => $2)", name, f"sms.{ANCHOR}"
                )
                done["distributed"].append(table)
        for signature, argument, forced in await conn.fetch(_FUNCTIONS, list(FORCE_DELEGATED)):
            await conn.execute(
                "SELECT create_distributed_function($1, $2, colocate_with => $3, force_delegation => $4)",
                signature,
                argument,
                f"sms.{ANCHOR}",
                forced,
            )
            done["functions"].append(signature)
    database = await conn.fetchval("SELECT current_database()")
    for name, value in settings.items():
        # names and values are the service's own (session_settings); the role is quoted by PostgreSQL
        await conn.execute(
            f"ALTER ROLE {await _ident(conn, role)} IN DATABASE {await _ident(conn, database)} SET {name} = "
            + await conn.fetchval("SELECT quote_literal($1::text)", value)
        )
        done["settings"].append(f"{name}={value}")
    return done


async def _ident(conn: asyncpg.Connection, name: str) -> str:
    return await conn.fetchval("SELECT quote_ident($1)", name)


async def _prepare(conn: asyncpg.Connection) -> None:
    """What Citus cannot take as it is on one server, changed alike on every node:
    - row-level security policies with a subquery (the tenants read once per statement): Citus
      refuses them on distributed tables, so they call sms.request_tenants() directly;
    - functions planned generically (plan_cache_mode = force_generic_plan, a saving on one server):
      Citus routes a statement by the tenant's value, which a generic plan leaves a parameter."""
    for table in await conn.fetch(
        "SELECT tablename FROM pg_policies WHERE schemaname = 'sms' AND policyname = 'tenant_isolation'"
        " AND qual LIKE '%SELECT%'"
    ):
        await conn.execute(
            f"ALTER POLICY tenant_isolation ON sms.{await _ident(conn, table[0])}"
            " USING (tenant_id = ANY (sms.request_tenants()))"
        )
    for function in await conn.fetch(
        "SELECT oid::regprocedure::text FROM pg_proc WHERE pronamespace = 'sms'::regnamespace"
        " AND 'plan_cache_mode=force_generic_plan' = ANY (proconfig)"
    ):
        await conn.execute(f"ALTER FUNCTION {function[0]} RESET plan_cache_mode")
