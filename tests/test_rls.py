"""Row-level security, the second wall (DESIGN §10; sql/002, 003, 004, 180): the service's queries
run as the role sms_api, which is no superuser, cannot bypass RLS and owns nothing, and every table
holding tenant data lets a transaction see and write only the rows of the tenants it acts for
(sms.act_for). SQL written by hand on the API's own connection, naming another tenant, sees none of
its rows and cannot write it; SQL users working as the owner see everything; the service refuses to
start as a role that RLS does not bind; and over HTTP a key reads only its tenants' data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import asyncpg
import httpx
import pytest
from helpers import FSA, ON_CITUS, apply_delta, listening, snapshot
from litestar.testing import AsyncTestClient

from app.api.app import create_app
from app.db.queries import Database, RoleError
from app.db.roles import API_ROLE, api_database_url
from app.domain.delta import WriteMeta
from app.domain.keys import NewKey, key_hash
from app.errors import Problem

A = "tenant-a"
B = "tenant-b"
LINEAGE = "shared-lineage"  # both tenants use the same state, lineage, task and alias ids
TASK = "T1"
MARKS = {A: "mark-of-a", B: "mark-of-b"}  # a value only that tenant's data holds
# On Citus only a SET LOCAL reaches the workers (propagated in a transaction block), as the service
# sends its tenants: a session's setting stays on the coordinator, where no tenant row is.
HOW = ["act_for in a transaction", "set_config for the session"][: 1 if ON_CITUS else 2]
RLS_REFUSED = "42501 row-level security"  # new row violates row-level security policy

TABLES = """
SELECT c.relname, c.relrowsecurity,
       EXISTS (SELECT FROM pg_attribute a
                WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped) AS tenant_data
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'sms' AND c.relkind IN ('r', 'p')
 ORDER BY c.relname
"""
VIEWS = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE n.nspname = 'sms' AND c.relkind IN ('v', 'm') ORDER BY c.relname
"""
PRIVILEGES = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]


async def tenant_tables(conn: asyncpg.Connection) -> list[str]:
    """Every table of schema sms with a tenant_id column, from the catalog."""
    return [row["relname"] for row in await conn.fetch(TABLES) if row["tenant_data"]]


async def api_may(conn: asyncpg.Connection, table: str, privilege: str) -> bool:
    return await conn.fetchval("SELECT has_table_privilege($1, $2::regclass, $3)", API_ROLE, f"sms.{table}", privilege)


async def seed(conn: asyncpg.Connection, tenant: str) -> None:
    """As the owner, rows of `tenant` in every tenant table: states, entries, the log, entry history,
    snapshots, member counts, policies and their change log, a refusal, a task comment, aliases and
    a cached slice summary, and the record of a purge, each holding the tenant's mark where it holds
    text."""
    mark = MARKS[tenant]
    await conn.execute("SET sms.snapshot_every = 1")  # a snapshot at every version
    state_rules = [{"path": "budget", "min": 0, "name": mark}]
    await conn.execute("SELECT sms.set_policy($1, $2, $3::jsonb, 'seeder')", tenant, FSA, json.dumps(state_rules))
    tenant_rules = [{"path": "spent", "min": 0, "name": mark}]
    await conn.execute("SELECT sms.set_policy($1, NULL, $2::jsonb, 'seeder')", tenant, json.dumps(tenant_rules))
    await apply_delta(
        conn,
        {f"tasks.{TASK}.status": "OPEN", f"tasks.{TASK}.owner": mark, "budget": 10, "note": mark},
        tenant,
        p_actor=f"actor-{mark}",
        p_lineage_id=LINEAGE,
    )
    await apply_delta(conn, {"budget": {"$inc": -1}, "note": f"{mark}-2"}, tenant, p_lineage_id=LINEAGE)
    refused = await apply_delta(conn, {"budget": {"$inc": -100}}, tenant, p_lineage_id=LINEAGE)
    assert refused["refused"] is True, refused
    await conn.execute("SELECT sms.add_comment($1, $2, $3, 'seeder', $4)", tenant, FSA, TASK, mark)
    await conn.execute("SELECT sms.set_alias($1, $2, 'job', 'tasks')", tenant, FSA)
    await conn.execute("SELECT sms.set_alias($1, $2, $3, 'tasks')", tenant, FSA, mark)
    read = await conn.fetchval("SELECT sms.read_slice($1, $2, 'tasks', NULL, 'key', NULL, '')::text", tenant, FSA)
    await conn.execute("SELECT sms.store_slice_summary($1, $2, $3::jsonb, $4)", tenant, FSA, read, mark)
    await conn.execute("SELECT sms.purge_state($1, 'scratch', $2)", tenant, mark)  # an erasure record
    await conn.execute("RESET sms.snapshot_every")


async def rows_by_table(conn: asyncpg.Connection, tenant: str | None = None) -> dict[str, tuple[int, str | None]]:
    """(row count, digest of the rows) of `tenant` (None: of whatever `conn` sees) in every tenant
    table."""
    found = {}
    for table in await tenant_tables(conn):
        found[table] = tuple(
            await conn.fetchrow(
                f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t::text)) FROM sms.{table} t"
                " WHERE $1::text IS NULL OR tenant_id = $1",
                tenant,
            )
        )
    return found


@pytest.fixture
async def seeded(conn: asyncpg.Connection) -> asyncpg.Connection:
    """The owner's connection, with rows of both tenants in every tenant table."""
    await seed(conn, A)
    await seed(conn, B)
    for table, (count, _) in (await rows_by_table(conn, B)).items():
        assert count > 0, f"seed() writes no row in sms.{table}: make it write one, so that isolation is tested there"
    return conn


@pytest.fixture
async def api(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the service's role, as its pool makes them."""
    connection = await asyncpg.connect(api_database_url(database_url))
    if ON_CITUS:  # as the service's sessions on a coordinator (app/db/queries.py)
        await connection.execute("SET citus.propagate_set_commands = 'local'")
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def acting_for(api: asyncpg.Connection, tenants: list[str] | None, how: str) -> AsyncIterator[None]:
    """The API's connection acting for `tenants`: through sms.act_for within a transaction (as the
    service's statements do), or by setting sms.tenants by hand for the whole session."""
    if how == HOW[0]:
        async with api.transaction():
            await api.execute("SELECT sms.act_for($1)", tenants)
            yield
    else:
        await api.execute("SELECT set_config('sms.tenants', coalesce($1::text[]::text, ''), false)", tenants)
        try:
            yield
        finally:
            await api.execute("RESET sms.tenants")


def outcome(exc: asyncpg.PostgresError | None) -> str:
    """How a statement ended: "ok", RLS_REFUSED, or its SQLSTATE."""
    if exc is None:
        return "ok"
    if exc.sqlstate == "42501" and "row-level security" in str(exc):
        return RLS_REFUSED
    return exc.sqlstate


# ---------------------------------------------------------------- the catalog


async def test_every_table_of_the_schema_has_row_level_security_on(conn):
    """A new table that forgets `ENABLE ROW LEVEL SECURITY` fails here."""
    tables = await conn.fetch(TABLES)
    assert len(tables) > 10
    assert [row["relname"] for row in tables if not row["relrowsecurity"]] == []


async def test_every_tenant_table_has_the_tenant_isolation_policy(conn):
    """Each table with a tenant_id column has the permissive policy tenant_isolation, for every
    command and every role, comparing tenant_id with sms.request_tenants() (its WITH CHECK too); no
    other permissive policy widens it."""
    tables = await tenant_tables(conn)
    assert {"states", "entries", "deltas", "refusals", "policies", "task_comments"} <= set(tables)
    policies = {
        row["tablename"]: row
        for row in await conn.fetch(
            "SELECT tablename, permissive, roles::text[] AS roles, cmd, qual, with_check FROM pg_policies"
            " WHERE schemaname = 'sms' AND policyname = 'tenant_isolation'"
        )
    }
    for table in tables:
        policy = policies.get(table)
        assert policy is not None, f"sms.{table} holds tenant data and has no policy tenant_isolation"
        assert (policy["permissive"], policy["roles"], policy["cmd"]) == ("PERMISSIVE", ["public"], "ALL"), table
        assert "tenant_id" in policy["qual"] and "sms.request_tenants()" in policy["qual"], (table, policy["qual"])
        assert policy["with_check"] is None or "sms.request_tenants()" in policy["with_check"], table
    # policies are or-ed: a second permissive policy would widen tenant_isolation
    widening = await conn.fetch(
        "SELECT tablename, policyname FROM pg_policies"
        " WHERE schemaname = 'sms' AND policyname <> 'tenant_isolation' AND permissive = 'PERMISSIVE'"
    )
    assert [tuple(row) for row in widening] == []


async def test_the_api_role_has_no_privilege_on_a_table_without_tenant_isolation(conn):
    """Tables without the policy (the keys, the rate buckets) are reached only through SECURITY
    DEFINER functions: sms_api holds no privilege at all on them."""
    unguarded = await conn.fetch(
        """SELECT c.relname, ARRAY(SELECT p FROM unnest($2::text[]) p WHERE has_table_privilege($1, c.oid, p)) AS held
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = 'sms' AND c.relkind IN ('r', 'p')
              AND NOT EXISTS (SELECT FROM pg_policy p WHERE p.polrelid = c.oid AND p.polname = 'tenant_isolation'
                                                      AND pg_get_expr(p.polqual, p.polrelid) LIKE '%request_tenants()%')
            ORDER BY c.relname""",
        API_ROLE,
        PRIVILEGES,
    )
    assert {"api_keys", "rate_buckets"} <= {row["relname"] for row in unguarded}
    assert {row["relname"]: row["held"] for row in unguarded if row["held"]} == {}


async def test_the_api_role_is_no_superuser_bypasses_no_rls_and_owns_nothing(conn):
    """sms_api is bound by every policy: no superuser, no BYPASSRLS, no member of the tables' owner,
    owner of no table, function or schema, and it may create nothing in schema sms."""
    role = await conn.fetchrow(
        "SELECT rolsuper, rolbypassrls, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1", API_ROLE
    )
    assert dict(role) == {"rolsuper": False, "rolbypassrls": False, "rolcreaterole": False, "rolcreatedb": False}
    owned = await conn.fetch(
        """SELECT c.relname FROM pg_class c WHERE c.relowner = $1::regrole
           UNION ALL SELECT p.proname FROM pg_proc p WHERE p.proowner = $1::regrole
           UNION ALL SELECT n.nspname FROM pg_namespace n WHERE n.nspowner = $1::regrole""",
        API_ROLE,
    )
    assert [row[0] for row in owned] == []
    member_of_the_owner = await conn.fetchval(
        "SELECT pg_has_role($1, (SELECT relowner FROM pg_class WHERE oid = 'sms.states'::regclass), 'MEMBER')",
        API_ROLE,
    )
    assert member_of_the_owner is False
    assert await conn.fetchval("SELECT has_schema_privilege($1, 'sms', 'CREATE')", API_ROLE) is False


async def test_the_api_role_cannot_touch_the_keys_or_the_rate_buckets(seeded, api, db):
    """The keys and the rate buckets are no tenant data: sms_api reads and writes them only through
    the SECURITY DEFINER functions; by hand it gets permission denied."""
    await db.create_key(NewKey.make([A], "admin"))
    for statement in (
        "SELECT * FROM sms.api_keys",
        "SELECT secret_hash FROM sms.api_keys WHERE key_id = 'k_x'",
        "SELECT * FROM sms.rate_buckets",
        "UPDATE sms.api_keys SET revoked_at = NULL",
        "DELETE FROM sms.api_keys",
        "INSERT INTO sms.rate_buckets VALUES ('k_x', 1e9, now())",
        "DELETE FROM sms.rate_buckets",
        "TRUNCATE sms.rate_buckets",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await api.execute(statement)
    assert await seeded.fetchval("SELECT count(*) FROM sms.api_keys WHERE revoked_at IS NULL") == 1


async def test_the_api_role_cannot_read_the_views(seeded, api):
    """The reporting views (sms.delta_lineage, …) read every tenant's rows; they are the owner's."""
    views = [row["relname"] for row in await seeded.fetch(VIEWS)]
    assert "delta_lineage" in views
    for view in views:
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
            await api.fetch(f"SELECT * FROM sms.{view}")


async def test_the_api_role_may_authenticate_and_ask_whether_keys_exist(api, db):
    """The SECURITY DEFINER functions every request needs answer the API's role, never with the hash."""
    assert await api.fetchval("SELECT sms.keys_exist()") is False
    key = NewKey.make([A], "write", actor="bot")
    await db.create_key(key)
    assert await api.fetchval("SELECT sms.keys_exist()") is True
    found = json.loads(await api.fetchval("SELECT sms.authenticate($1)::text", key_hash(key.key)))
    assert (found["key_id"], found["tenants"], found["actor"]) == (key.key_id, [A], "bot")
    assert "secret_hash" not in found
    assert await api.fetchval("SELECT sms.authenticate($1)", key_hash(NewKey.make([A], "read").key)) is None


async def test_the_api_role_cannot_turn_row_level_security_off(seeded, api):
    """row_security = off makes a query a policy would filter fail rather than see more; disabling
    RLS, changing a policy or taking the owner's role is the owner's alone."""
    await api.execute("SET row_security = off")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await api.fetch("SELECT * FROM sms.entries")
    await api.execute("RESET row_security")
    for statement in (
        "ALTER TABLE sms.entries DISABLE ROW LEVEL SECURITY",
        "DROP POLICY tenant_isolation ON sms.entries",
        "ALTER POLICY tenant_isolation ON sms.entries USING (true)",
        "CREATE POLICY everything ON sms.entries USING (true)",
    ):
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"must be (the )?owner"):
            await api.execute(statement)
    owner = await seeded.fetchval("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'sms.states'::regclass")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.execute(f'SET ROLE "{owner}"')
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await api.execute(f'SET SESSION AUTHORIZATION "{owner}"')
    assert await api.fetchval("SELECT count(*) FROM sms.entries") == 0


# ---------------------------------------------------------------- reading another tenant


async def test_a_forged_query_naming_another_tenant_sees_none_of_its_rows(seeded, api):
    """Acting for A, `SELECT … WHERE tenant_id = 'B'` on every tenant table finds nothing, and an
    unfiltered select finds exactly A's rows."""
    own = await rows_by_table(seeded, A)
    for how in HOW:
        async with acting_for(api, [A], how):
            for table in await tenant_tables(seeded):
                assert await api.fetch(f"SELECT * FROM sms.{table} WHERE tenant_id = $1", B) == [], (how, table)
                assert await api.fetchval(f"SELECT count(*) FROM sms.{table} WHERE tenant_id <> $1", A) == 0
                assert MARKS[B] not in str(await api.fetch(f"SELECT * FROM sms.{table}")), (how, table)
            assert await rows_by_table(api) == own, how


async def test_the_service_functions_called_for_another_tenant_see_none_of_its_rows(seeded, api):
    """sms.document, read_slice, feed_after, path_changes and the other readers, called for B while
    acting for A, answer as for a state never written; called for A they answer A's rows."""
    for how in HOW:
        async with acting_for(api, [A], how):
            assert json.loads(await api.fetchval("SELECT sms.document($1, $2)::text", B, FSA)) == {}, how
            assert await api.fetchval("SELECT sms.current_version($1, $2)", B, FSA) == 0
            read = json.loads(
                await api.fetchval("SELECT sms.read_slice($1, $2, 'tasks', NULL, 'key', NULL, '')::text", B, FSA)
            )
            assert (read["slice"], read["total"], read["version"], read["cached"]) == ({}, 0, 0, False)
            for fsa in (FSA, None):
                assert await api.fetch("SELECT * FROM sms.feed_after($1, $2, 0, 0, 1000)", B, fsa) == []
            for path in ("note", "tasks", f"tasks.{TASK}.owner"):
                assert await api.fetch("SELECT * FROM sms.path_changes($1, $2, $3, 100)", B, FSA, path) == []
            aliases = json.loads(await api.fetchval("SELECT sms.aliases_of($1, $2)::text", B, FSA))
            assert "job" not in aliases and MARKS[B] not in aliases  # B's own; the defaults remain
            policies = json.loads(await api.fetchval("SELECT sms.policies_of($1, $2)::text", B, FSA))
            assert (policies["rules"], policies["defaults"]) == ([], [])
            changes = await api.fetchval("SELECT sms.changes_since($1, $2, 0, NULL)::text", B, FSA)
            assert MARKS[B] not in changes
            lineage = await api.fetch("SELECT * FROM sms.deltas WHERE lineage_id = $1", LINEAGE)
            assert {row["tenant_id"] for row in lineage} == {A}
            # the same calls for A answer A's rows: only B is hidden
            assert json.loads(await api.fetchval("SELECT sms.document($1, $2)::text", A, FSA))["note"] == "mark-of-a-2"
            assert len(await api.fetch("SELECT * FROM sms.feed_after($1, $2, 0, 0, 1000)", A, FSA)) == 2
            assert len(await api.fetch("SELECT * FROM sms.path_changes($1, $2, 'note', 100)", A, FSA)) == 2


@pytest.mark.parametrize("tenants", [None, []], ids=["NULL", "empty"])
async def test_acting_for_no_tenant_sees_nothing_at_all(seeded, api, tenants):
    """A connection that acts for nobody (never set, NULL or no tenant) sees no row of any tenant
    table, whatever it names."""
    nothing = {table: (0, None) for table in await tenant_tables(seeded)}
    assert await rows_by_table(api) == nothing
    for how in HOW:
        async with acting_for(api, tenants, how):
            assert await rows_by_table(api) == nothing, how
            for tenant in (A, B):
                assert json.loads(await api.fetchval("SELECT sms.document($1, $2)::text", tenant, FSA)) == {}
                assert await api.fetch("SELECT * FROM sms.feed_after($1, NULL, 0, 0, 1000)", tenant) == []


async def test_what_a_statement_acts_for_ends_with_its_transaction(seeded, api):
    """The service's statements act for their key's tenants in their own transaction only: a
    pooled connection handed to the next request carries nothing over."""
    # (on Citus the service's statements all run in a transaction block, and Citus cannot plan this one)
    if not ON_CITUS:
        seen = await api.fetchval(
            "SELECT n FROM sms.act_for($1) acting,"
            " LATERAL (SELECT count(*) AS n FROM sms.deltas WHERE acting OFFSET 0) d",
            [A],
        )
        assert seen == 2
    assert await api.fetchval("SELECT sms.request_tenants()") is None
    assert await api.fetchval("SELECT count(*) FROM sms.deltas") == 0
    async with api.transaction():
        await api.execute("SELECT sms.act_for($1)", [B])
        assert await api.fetchval("SELECT count(*) FROM sms.deltas WHERE tenant_id = $1", B) == 2
    assert await api.fetchval("SELECT count(*) FROM sms.deltas") == 0


async def test_a_pooled_connection_given_back_acts_for_no_tenant(seeded, database_url):
    """The pool gives connections back without RESET ALL (app.db.queries._keep_session): after the
    service's statements of every kind acted for A on the pool's one connection — a read, a write,
    a batch, a slice read in a transaction of its own, a write that failed — that connection acts
    for nobody, and a request for B on it sees nothing of A."""
    db = await Database.connect(api_database_url(database_url), min_size=1, max_size=1)
    try:
        as_a, as_b = db.acting_for([A]), db.acting_for([B])
        assert (await as_a.read_document(A, FSA))[0] == 2
        await as_a.apply_delta(A, FSA, '{"n": 1}', WriteMeta())
        await as_a.apply_deltas(A, FSA, [('{"n": 2}', WriteMeta()), ('{"n": {"$push": 1}}', WriteMeta())])
        await as_a.read_slice(A, FSA, "tasks", None, "key", '$ ? (@.status == "OPEN")', "")
        with pytest.raises(Problem):
            await as_a.apply_delta(A, FSA, '{"n": {"$push": 1}}', WriteMeta())
        async with db.pool.acquire() as raw:
            assert await raw.fetchval("SELECT sms.request_tenants()") is None
            assert await raw.fetchval("SELECT count(*) FROM sms.deltas") == 0
        assert await as_b.read_document(A, FSA) == (0, {})
    finally:
        await db.close()


async def test_the_owner_sees_every_tenants_rows_without_acting_for_any(seeded, api):
    """SQL users (analysts, psql) work as the owner: no setting, every tenant, the views too."""
    assert await seeded.fetchval("SELECT sms.request_tenants()") is None
    for table in await tenant_tables(seeded):
        tenants = await seeded.fetchval(f"SELECT array_agg(DISTINCT tenant_id ORDER BY tenant_id) FROM sms.{table}")
        assert tenants == [A, B], table
    lineage = await seeded.fetch("SELECT tenant_id, deltas FROM sms.delta_lineage WHERE lineage_id = $1", LINEAGE)
    assert sorted(tuple(row) for row in lineage) == [(A, 2), (B, 2)]
    for tenant in (A, B):
        assert json.loads(await seeded.fetchval("SELECT sms.document($1, $2)::text", tenant, FSA))["note"] == (
            f"{MARKS[tenant]}-2"
        )
    # acting for A changes nothing for the owner: policies bind every role but the tables' owner
    async with seeded.transaction():
        await seeded.execute("SELECT sms.act_for($1)", [A])
        assert await seeded.fetchval("SELECT count(*) FROM sms.deltas WHERE tenant_id = $1", B) == 2


# ---------------------------------------------------------------- writing another tenant

FORGED = '{"note": "forged"}'
B_FIRST_DELTA = "<the id of B's first delta>"
WRITES = {
    # name: (statement, arguments, outcome)
    "apply_delta to B's state": ("SELECT sms.apply_delta($1, $2, $3::jsonb)", [B, FSA, FORGED], RLS_REFUSED),
    "apply_delta to a new state of B": ("SELECT sms.apply_delta($1, $2, $3::jsonb)", [B, "new", FORGED], RLS_REFUSED),
    "apply_delta reusing B's delta id": (
        "SELECT sms.apply_delta($1, $2, $3::jsonb, p_delta_id => $4::uuid)",
        [B, FSA, FORGED, B_FIRST_DELTA],
        RLS_REFUSED,
    ),
    "replace_state": ("SELECT sms.replace_state($1, $2, $3::jsonb)", [B, FSA, FORGED], RLS_REFUSED),
    "rollback to version 0": ("SELECT sms.rollback($1, $2, 0)", [B, FSA], RLS_REFUSED),
    # A sees no version 1 of B, nor its task T1: not found, as for anything that is not there
    "rollback to a version of B": ("SELECT sms.rollback($1, $2, 1)", [B, FSA], "SM010"),
    "add_comment": ("SELECT sms.add_comment($1, $2, $3, 'intruder', 'x')", [B, FSA, TASK], "SM010"),
    "heartbeat": ("SELECT sms.heartbeat($1, $2, 'intruder')", [B, FSA], RLS_REFUSED),
    "set_policy of a state": ("SELECT sms.set_policy($1, $2, '[]'::jsonb, 'intruder')", [B, FSA], RLS_REFUSED),
    "set_policy of the tenant": ("SELECT sms.set_policy($1, NULL, '[]'::jsonb, 'intruder')", [B], RLS_REFUSED),
    "set_alias": ("SELECT sms.set_alias($1, $2, 'job', 'x')", [B, FSA], RLS_REFUSED),
    # removing B's alias deletes the rows A sees of it: none
    "set_alias removing B's alias": ("SELECT sms.set_alias($1, $2, 'job', NULL)", [B, FSA], "ok"),
    "store_slice_summary": (
        "SELECT sms.store_slice_summary($1, $2, sms.read_slice($1, $2, 'tasks', NULL, 'key', NULL, ''), 'x')",
        [B, FSA],
        RLS_REFUSED,
    ),
}


async def test_a_write_to_another_tenant_fails_and_changes_nothing(seeded, api, database_url):
    """Acting for A, each writing function called for B fails — SQLSTATE 42501, new row violates
    row-level security policy — or, where what it would change is invisible to A, finds nothing:
    B's version, log and document and every row of B in every table stay as they were, and
    nothing is notified."""
    first = await seeded.fetchval("SELECT delta_id::text FROM sms.deltas WHERE tenant_id = $1 AND version = 1", B)
    before = (await snapshot(seeded, B, FSA), await rows_by_table(seeded, B))
    outcomes, messages, changed = {}, {}, []
    async with listening(database_url) as feed:
        for how in HOW:
            for name, (statement, args, _) in WRITES.items():
                args = [first if arg == B_FIRST_DELTA else arg for arg in args]
                failure = None
                try:
                    async with acting_for(api, [A], how):
                        await api.fetchval(statement, *args)
                except asyncpg.PostgresError as exc:
                    failure = exc
                outcomes[how, name] = outcome(failure)
                messages[how, name] = str(failure)
                if (await snapshot(seeded, B, FSA), await rows_by_table(seeded, B)) != before:
                    changed.append((how, name))
        await feed.assert_silent()
    expected = {(how, name): result for how in HOW for name, (_, _, result) in WRITES.items()}
    unexpected = {attempt: messages[attempt] for attempt in outcomes if outcomes[attempt] != expected[attempt]}
    assert outcomes == expected, unexpected
    assert changed == []
    assert await seeded.fetchval("SELECT count(*) FROM sms.states WHERE fsa_id = 'new'") == 0


async def test_the_services_own_write_statement_for_another_tenant_fails(seeded, api):
    """The statement the service sends (app/db/queries.py), acting for A, for a state of B."""
    before = await rows_by_table(seeded, B)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        await api.fetchval(
            "SELECT sms.apply_delta($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8::text::jsonb, $9, $10)::text"
            " FROM sms.act_for($11)",
            *(B, FSA, '{"note": "x"}', "intruder", None, None, None, "{}", None, None),
            [A],
        )
    assert await rows_by_table(seeded, B) == before


async def test_hand_written_updates_and_deletes_of_another_tenants_rows_affect_none(seeded, api):
    """UPDATE and DELETE naming B affect 0 rows in every tenant table the API's role may change,
    and are refused outright where it may not."""
    before = await rows_by_table(seeded, B)
    for how in HOW:
        for table in await tenant_tables(seeded):
            for privilege, statement in (
                ("UPDATE", f"UPDATE sms.{table} SET tenant_id = tenant_id WHERE tenant_id = $1"),
                ("DELETE", f"DELETE FROM sms.{table} WHERE tenant_id = $1"),
            ):
                async with acting_for(api, [A], how):
                    if await api_may(seeded, table, privilege):
                        assert await api.execute(statement, B) == f"{privilege} 0", (how, statement)
                    else:
                        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                            await api.execute(statement, B)
    assert await rows_by_table(seeded, B) == before


async def test_a_row_cannot_be_moved_or_copied_into_another_tenant(seeded, api):
    """Acting for A, relabelling A's rows as B's (UPDATE … SET tenant_id) or inserting a copy of one
    as B's is refused in every tenant table the API's role may write: the new row violates the
    policy (or an append-only table's trigger refuses the update first)."""
    before = {tenant: await rows_by_table(seeded, tenant) for tenant in (A, B)}
    outcomes = {}
    for table in await tenant_tables(seeded):
        attempts = {
            "UPDATE": f"UPDATE sms.{table} SET tenant_id = $1 WHERE tenant_id = $2",
            "INSERT": f"""INSERT INTO sms.{table} OVERRIDING SYSTEM VALUE
                          SELECT (jsonb_populate_record(NULL::sms.{table}, to_jsonb(t) || jsonb_build_object(
                                      'tenant_id', $1::text))).*
                            FROM sms.{table} t WHERE tenant_id = $2""",
        }
        for privilege, statement in attempts.items():
            if not await api_may(seeded, table, privilege):
                continue
            failure = None
            try:
                async with acting_for(api, [A], HOW[0]):
                    await api.execute(statement, B, A)
            except asyncpg.PostgresError as exc:
                failure = exc
            outcomes[table, privilege] = outcome(failure)
    # every tenant table but the erasure records, which only the owner's functions write
    inserted = {table for table, privilege in outcomes if privilege == "INSERT"}
    assert inserted == set(await tenant_tables(seeded)) - {"erasures"}
    # SM008: an append-only table's trigger (entry_history's) refuses the UPDATE before the policy is
    # checked. On Citus (0A000) an UPDATE of the distribution column is refused before either, and
    # the copy, moved between nodes by COPY, is refused by row-level security as a whole.
    also_refused = {("UPDATE", "SM008")} | ({("UPDATE", "0A000"), ("INSERT", "0A000")} if ON_CITUS else set())
    refused_otherwise = {
        attempt: result
        for attempt, result in outcomes.items()
        if result != RLS_REFUSED and (attempt[1], result) not in also_refused
    }
    assert refused_otherwise == {}
    assert {tenant: await rows_by_table(seeded, tenant) for tenant in (A, B)} == before


async def test_keys_managed_through_the_api_role_name_only_the_tenants_it_acts_for(seeded, api, db):
    """The key functions run as the owner but keep to the caller's tenants: acting for A, no key for
    B can be made, listed or revoked."""
    own, other, both = NewKey.make([A], "admin"), NewKey.make([B], "admin"), NewKey.make([A, B], "read")
    for key in (own, other, both):
        await db.create_key(key)
    new = NewKey.make([B], "admin")
    args = (new.key_id, new.secret_hash, list(new.tenants), list(new.scopes))
    with pytest.raises(asyncpg.PostgresError) as raised:
        await api.fetchval("SELECT sms.create_key($1, $2, $3, $4) FROM sms.act_for($5)", *args, [A])
    assert raised.value.sqlstate == "SM013"
    listed = json.loads(await api.fetchval("SELECT sms.list_keys()::text FROM sms.act_for($1)", [A]))
    assert [key["key_id"] for key in listed] == [own.key_id]
    for key in (other, both):
        with pytest.raises(asyncpg.PostgresError) as raised:
            await api.fetchval("SELECT sms.revoke_key($1) FROM sms.act_for($2)", key.key_id, [A])
        assert raised.value.sqlstate == "SM010"
    assert await seeded.fetchval("SELECT count(*) FROM sms.api_keys WHERE revoked_at IS NOT NULL") == 0
    assert await seeded.fetchval("SELECT count(*) FROM sms.api_keys") == 3


# ---------------------------------------------------------------- the service


@pytest.fixture
async def unbound_role(request, conn: asyncpg.Connection, database_url: str) -> AsyncIterator[str]:
    """The database URL of a role that RLS does not bind: the owner itself, a role with BYPASSRLS,
    or a member of the owner's role (roles belong to the cluster: made here, dropped after)."""
    if request.param == "the owner":
        yield database_url
        return
    role = f"sms_test_{request.param.replace(' ', '_')}_{uuid.uuid4().hex[:8]}"
    owner = await conn.fetchval("SELECT relowner::regrole::text FROM pg_class WHERE oid = 'sms.states'::regclass")
    await conn.execute(f'CREATE ROLE "{role}" LOGIN' + (" BYPASSRLS" if request.param == "bypassrls" else ""))
    try:
        await conn.execute(f'GRANT USAGE ON SCHEMA sms TO "{role}"')
        if request.param == "member of the owner":
            await conn.execute(f'GRANT "{owner}" TO "{role}"')
        yield api_database_url(database_url, role)
    finally:
        await conn.execute(f'DROP OWNED BY "{role}"')
        await conn.execute(f'DROP ROLE "{role}"')


@pytest.mark.parametrize("unbound_role", ["the owner", "bypassrls", "member of the owner"], indirect=True)
async def test_the_service_refuses_to_start_as_a_role_rls_does_not_bind(settings, database_url, unbound_role):
    """A service running as a role RLS does not bind would have one wall, not two: its lifespan
    fails with RoleError (app.db.queries.Database.check_role)."""
    app = create_app(replace(settings, api_database_url=unbound_role), database_url)
    refused = pytest.RaisesExc(RoleError, match="not bound by row-level security")
    # the test client's task group wraps what the lifespan raised
    with pytest.RaisesGroup(refused, allow_unwrapped=True, flatten_subgroups=True):
        async with AsyncTestClient(app=app):
            pass


async def test_the_services_connections_run_as_the_api_role(client, conn):
    """Every connection the running service holds to its database (pool and listener) is sms_api."""
    assert (await client.get("/state/t/f")).status_code == 200
    users = await conn.fetch(
        "SELECT DISTINCT usename FROM pg_stat_activity"
        " WHERE datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
        " AND application_name NOT LIKE 'citus\\_internal %'"  # on Citus: its nodes' own connections
    )
    assert [row["usename"] for row in users] == [API_ROLE]


LAST_OF_A = "last-change-of-a"
SSE_EVENTS = {f"/state/{A}/{FSA}/events", f"/events?tenant={A}"}
# Every read route of the service, as a key of A reads it, and a text A's own answer holds.
READS = {
    "/state/{tenant_id:str}": [(f"/state/{A}", f'"tenant_id": "{A}"')],
    "/state/{tenant_id:str}/{fsa_id:str}": [
        (f"/state/{A}/{FSA}", "mark-of-a-2"),
        (f"/state/{A}/{FSA}?summary=true", "mark-of-a-2"),
        (f"/state/{A}/{FSA}?version=1", MARKS[A]),
    ],
    "/state/{tenant_id:str}/{fsa_id:str}/slice": [
        (f"/state/{A}/{FSA}/slice?slice=tasks", MARKS[A]),
        (f"/state/{A}/{FSA}/slice?slice=job:*", MARKS[A]),
    ],
    "/state/{tenant_id:str}/{fsa_id:str}/aliases": [(f"/state/{A}/{FSA}/aliases", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/deltas": [(f"/state/{A}/{FSA}/deltas", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/events": [(f"/state/{A}/{FSA}/events", MARKS[A])],
    "/events": [(f"/events?tenant={A}", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/history": [(f"/state/{A}/{FSA}/history?path=note", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/diff": [(f"/state/{A}/{FSA}/diff?from=0", MARKS[A])],
    "/lineage/{lineage_id:str}": [(f"/lineage/{LINEAGE}?tenant_id={A}", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/changes": [(f"/state/{A}/{FSA}/changes?since=0", MARKS[A])],
    "/tasks/{tenant_id:str}/{fsa_id:str}/{task_id:str}/comments": [(f"/tasks/{A}/{FSA}/{TASK}/comments", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/policies": [(f"/state/{A}/{FSA}/policies", MARKS[A])],
    "/tenants/{tenant_id:str}/policies": [(f"/tenants/{A}/policies", MARKS[A])],
    "/keys": [("/keys", "<the key of A>")],
    "/state/{tenant_id:str}/{fsa_id:str}/erasures": [(f"/state/{A}/scratch/erasures", MARKS[A])],
    "/state/{tenant_id:str}/{fsa_id:str}/ttl": [(f"/state/{A}/{FSA}/ttl", f'"tenant_id": "{A}"')],
    "/metrics": [("/metrics", "sms_deltas_applied_total")],  # counts only: no label names a tenant
}


async def read_events(http: httpx.AsyncClient, url: str, until: str) -> str:
    """The events of an SSE stream up to the first whose data holds `until`, as text."""
    events: list[str] = []
    async with asyncio.timeout(60), http.stream("GET", url) as response:
        assert response.status_code == 200, url
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(line)
                if until in line:
                    break
    return "\n".join(events)


async def test_every_read_route_answers_a_key_only_its_tenants_data(seeded, db, settings, live_url):
    """With a key of A, every GET route of the service answers A's data and nothing of B's, though
    both tenants use the same state, lineage, task and alias ids: no mark of B, none of B's delta
    ids, not B's key."""
    # A's last change comes after all of B's: a stream leaking B's changes would carry one before it
    await apply_delta(seeded, {"last": LAST_OF_A}, A)
    key, other = NewKey.make([A], "admin"), NewKey.make([B], "admin")
    for made in (key, other):
        await db.create_key(made)
    routes = {
        route.path
        for route in create_app(settings, settings.database_url).routes
        if "GET" in getattr(route, "methods", ())
        and route.path not in ("/health", "/health/live", "/health/ready")  # open: no tenant's data
        and not route.path.startswith(("/schema", "/ui/"))  # no tenant's data: the page reads the API
    }
    assert set(READS) == routes, "a read route without an entry in READS"
    b_deltas = [str(row[0]) for row in await seeded.fetch("SELECT delta_id FROM sms.deltas WHERE tenant_id = $1", B)]
    leaks = {}
    headers = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=live_url, headers=headers, timeout=15) as http:
        for url, a_holds in [read for reads in READS.values() for read in reads]:
            if url in SSE_EVENTS:
                text = await read_events(http, url, until=LAST_OF_A)
            else:
                response = await http.get(url)
                assert response.status_code == 200, (url, response.text)
                text = response.text
            assert a_holds.replace("<the key of A>", key.key_id) in text, (url, text)
            found = [leak for leak in (MARKS[B], other.key_id, *b_deltas) if leak in text]
            if found:
                leaks[url] = found
        assert leaks == {}
        lineage = (await http.get(f"/lineage/{LINEAGE}?tenant_id={A}")).json()
        assert [(d["fsa_id"], d["version"]) for d in lineage["deltas"]] == [(FSA, 1), (FSA, 2)]
        assert (await http.get(f"/lineage/{LINEAGE}?tenant_id={B}")).status_code == 404
