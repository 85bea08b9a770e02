"""Data lifecycle (DESIGN §14): the audited purge, TTL expiry and compaction.

- A purge (sms.purge_state, DELETE /state/{t}/{f}) leaves no row of the state in any table of
  schema sms with tenant_id and fsa_id columns — found in the catalog, so a table added later is
  covered — and is recorded in sms.erasures, which keeps the record; the tenant's other states and
  the same state id of another tenant keep every row; the state reads as never written.
- A purge takes the state's lock and its fence: it waits for a write in flight — a delta, a
  comment, an alias, a policy, a cached summary, a TTL — and erases it too; a summary read before
  the purge is not cached after it.
- The state's subscribers hear the end: a NOTIFY, the SSE stream's final `purged` event, and
  StatePurged for Feed.subscribe (also when the notice is not sent: the feed polls).
- The append-only tables still refuse UPDATE, DELETE and TRUNCATE outside an erasure, to the
  owner in plain SQL too; an erasure recorded by an earlier transaction or by another one, or a
  compaction's record beyond its version, opens nothing; one recorded in a savepoint is the
  transaction's own; the service's role can neither delete nor record one.
- Over HTTP the lifecycle routes need an admin key, another tenant's state is a 404, and bad input
  (a bad duration, a negative or future version) gets its documented 4xx and changes nothing.
- TTL: a sweep purges the states past their TTL, of every tenant (actor "ttl"), and keeps active
  ones, also one written after the sweep listed it; the running service's sweeper does it by
  itself.
- On Citus (SMS_TEST_CITUS_URL) the same tests hold, the erasures made by bare calls, which Citus
  delegates to the tenant's node; a purge, compaction or sweep run statement by statement from the
  coordinator is refused and erases nothing (on one server it runs).
- Compaction: replaying the kept log on the compaction snapshot gives the current state, every
  version from the snapshot on reads as before, and an older one — or the log after one — is the
  documented 404 history-compacted.

Nothing asserts on wall-clock time: TTLs are made to run out by moving a state's last write back
by hours, and waits are bounded only as hang guards.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from helpers import (
    ON_CITUS,
    apply_delta,
    assert_problem,
    document,
    listening,
    log_rows,
    log_versions,
    snapshot,
    version,
)
from test_auth import auth_on, bearer, make_key

from app.db.periodic import Periodic
from app.db.roles import api_database_url
from app.db.sweeper import sweep_expired
from app.errors import database_unavailable
from app.feed import Feed, StatePurged

WAIT_SECONDS = 60.0  # the most any wait may take; generous, so slow machines never fail
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)  # an SSE stream may stay silent; waits are bounded elsewhere
PURGED = ("t", "f")
NEIGHBOUR = ("t", "g")  # another state of the same tenant
TWIN = ("u", "f")  # the same state id in another tenant
RECORD = "erasures"  # the table that keeps the record of a purge, and so keeps a row of the state
# the tenant's own rows that hold no state's data: its feed's clock (sql/013_feed.sql), which the
# tenant's other states, and the states it writes later, go on counting from
TENANT_ROWS = ("feed_clocks",)
APPEND_ONLY = ("deltas", "entry_history", "task_comments", "policy_changes", "refusals", "erasures")

# Every table of schema sms holding tenant data, from the catalog: per_state when it has fsa_id too.
TENANT_TABLES = f"""
SELECT t.table_name::text AS name, bool_or(c.column_name = 'fsa_id') AS per_state
  FROM information_schema.tables t
  JOIN information_schema.columns c ON c.table_schema = t.table_schema AND c.table_name = t.table_name
 WHERE t.table_schema = 'sms' AND t.table_type = 'BASE TABLE' AND c.column_name IN ('tenant_id', 'fsa_id')
   AND t.table_name NOT IN ({", ".join(f"'{table}'" for table in TENANT_ROWS)})
 GROUP BY t.table_name
HAVING bool_or(c.column_name = 'tenant_id')
 ORDER BY 1
"""


# ---------------------------------------------------------------- helpers


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = WAIT_SECONDS) -> None:
    """Waits (bounded) for `condition`, checked every 20 ms."""
    try:
        async with asyncio.timeout(within):
            while True:
                result = condition()
                if await result if inspect.isawaitable(result) else result:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


async def tenant_tables(conn: asyncpg.Connection) -> dict[str, bool]:
    """{table: whether it holds rows per state (has fsa_id)} for every table with a tenant_id."""
    return {row["name"]: row["per_state"] for row in await conn.fetch(TENANT_TABLES)}


async def rows_of(conn: asyncpg.Connection, tables: dict[str, bool], tenant: str, fsa: str) -> dict[str, int]:
    """How many rows each table holds of the state (of its tenant, for a table without fsa_id)."""
    counts = {}
    for table, per_state in tables.items():
        assert table.isidentifier(), table
        where = "tenant_id = $1 AND fsa_id = $2" if per_state else "tenant_id = $1 AND $2::text IS NOT NULL"
        counts[table] = await conn.fetchval(f"SELECT count(*) FROM sms.{table} WHERE {where}", tenant, fsa)
    return counts


async def seed_everything(conn: asyncpg.Connection, tenant: str, fsa: str) -> None:
    """A state with a row in every table a state has rows in: entries, log, history, a snapshot,
    member counts, a comment, an alias, a policy and its change, a refusal, a cached summary and a TTL."""
    await conn.execute("SET sms.snapshot_every = 2")
    await apply_delta(conn, {"tasks": {"T1": {"status": "OPEN"}}, "n": 1}, tenant, fsa, p_lineage_id="L1")
    await apply_delta(conn, {"n": {"$inc": 1}}, tenant, fsa)
    await apply_delta(conn, {"tasks.T1.status": "DONE"}, tenant, fsa)
    await conn.execute("SELECT sms.add_comment($1, $2, 'T1', 'ann', 'a comment')", tenant, fsa)
    await conn.execute("SELECT sms.set_alias($1, $2, 'todo', 'tasks')", tenant, fsa)
    await conn.execute("""SELECT sms.set_policy($1, $2, '[{"path": "n", "min": 0}]', 'ops')""", tenant, fsa)
    assert (await apply_delta(conn, {"n": -5}, tenant, fsa))["refused"] is True
    read = await conn.fetchval("SELECT sms.read_slice($1, $2, 'tasks')::text", tenant, fsa)
    await conn.execute("SELECT sms.store_slice_summary($1, $2, $3::jsonb, 'a summary')", tenant, fsa, read)
    await conn.execute("SELECT sms.set_expiry($1, $2, '1 day')", tenant, fsa)
    await conn.execute("RESET sms.snapshot_every")


async def erasures(conn: asyncpg.Connection, tenant: str = "t", fsa: str = "f") -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT action, actor, key_id, last_version, through_version, removed::text FROM sms.erasures"
        " WHERE tenant_id = $1 AND fsa_id = $2 ORDER BY erased_at",
        tenant,
        fsa,
    )
    return [{**dict(row), "removed": json.loads(row["removed"])} for row in rows]


async def sse_events(http: httpx.AsyncClient, path: str, events: list[dict[str, str]]) -> None:
    """Follows an SSE stream, appending each event ({"event", "id", "data"}; not the `retry` advice
    that opens it), until the server ends it."""
    async with http.stream("GET", path) as response:
        assert response.status_code == 200, await response.aread()
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in event:
                    events.append(event)
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")


@contextlib.asynccontextmanager
async def background(coroutine: Awaitable[Any]) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.ensure_future(coroutine)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def lock_wait(conn: asyncpg.Connection, other: asyncpg.Connection) -> Callable[[], Awaitable[bool]]:
    """A check, asked on `conn`, of whether what `other` runs waits for a lock: in its own backend,
    and on Citus in any node's backend that runs it (a delegated call waits on the tenant's node)."""
    if ON_CITUS:
        query = "SELECT EXISTS (SELECT FROM citus_stat_activity WHERE global_pid = $1 AND wait_event_type = 'Lock')"
        backend = await other.fetchval("SELECT citus_backend_gpid()")
    else:
        query = "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock')"
        backend = other.get_server_pid()
    return lambda: conn.fetchval(query, backend)


# ---------------------------------------------------------------- the purge


async def test_a_purge_leaves_no_row_of_the_state_in_any_table_and_is_recorded(conn):
    tables = await tenant_tables(conn)
    assert {"states", "entries", "deltas", "entry_history", "snapshots", "task_comments", "summary_cache"} <= set(
        tables
    ), tables  # the catalog query is about something
    for state in (PURGED, NEIGHBOUR, TWIN):
        await seed_everything(conn, *state)
    before = {state: await rows_of(conn, tables, *state) for state in (PURGED, NEIGHBOUR, TWIN)}
    unseeded = [table for table, count in before[PURGED].items() if count == 0 and table != RECORD]
    assert unseeded == [], f"seed_everything must give the state a row in {unseeded}, to see the purge erase it"

    record = json.loads(await conn.fetchval("SELECT sms.purge_state($1, $2, 'dpo', 'k_test')", *PURGED))

    left = {table: count for table, count in (await rows_of(conn, tables, *PURGED)).items() if count}
    assert left == {RECORD: 1}, f"rows of the purged state left behind: {left}"
    for state in (NEIGHBOUR, TWIN):
        assert await rows_of(conn, tables, *state) == before[state], state
    erased = {table: count for table, count in before[PURGED].items() if tables[table] and table != RECORD}
    assert record["removed"] == erased
    assert (record["action"], record["actor"], record["key_id"]) == ("purge", "dpo", "k_test")
    assert (record["last_version"], record["through_version"]) == (3, None)
    assert record["db_user"] == await conn.fetchval("SELECT session_user::text")
    assert await erasures(conn) == [
        {"action": "purge", "actor": "dpo", "key_id": "k_test", "last_version": 3, "through_version": None,
         "removed": erased}
    ]  # fmt: skip


async def test_a_purged_state_reads_as_never_written_and_starts_again_at_version_1(client, conn):
    await seed_everything(conn, *PURGED)
    assert (await client.delete("/state/t/f")).status_code == 200
    assert (await client.get("/state/t/f")).json() == {"tenant_id": "t", "fsa_id": "f", "version": 0, "state": {}}
    assert (await client.get("/state/t/f/deltas")).json()["deltas"] == []
    assert (await client.get("/state/t/f/aliases")).json()["aliases"].get("todo") is None
    assert (await client.get("/state/t/f/ttl")).json()["expires_after_seconds"] is None
    written = await client.post("/state/t/f/delta", json={"n": 7})
    assert written.json()["version"] == 1
    assert await document(conn) == {"n": 7}


async def test_purging_a_state_never_written_is_recorded_and_changes_nothing_else(client, conn):
    await apply_delta(conn, {"n": 1}, *NEIGHBOUR)
    response = await client.delete("/state/t/nothing?actor=dpo")
    assert response.status_code == 200
    assert response.json()["last_version"] == 0 and set(response.json()["removed"].values()) == {0}
    assert await erasures(conn, "t", "nothing") == [
        {**{k: response.json()[k] for k in ("action", "actor", "key_id", "last_version", "through_version")},
         "removed": response.json()["removed"]}
    ]  # fmt: skip
    assert await version(conn, *NEIGHBOUR) == 1


# What a writer of a state may have under way when a purge comes: a delta (the state's lock), and
# the writes outside the delta path (the state's fence).
WRITES_IN_FLIGHT = {
    "delta": """SELECT sms.apply_delta('t', 'f', '{"n": 2}')""",
    "comment": "SELECT sms.add_comment('t', 'f', 'T1', 'ann', 'one more')",
    "alias": "SELECT sms.set_alias('t', 'f', 'late', 'tasks')",
    "policy": """SELECT sms.set_policy('t', 'f', '[{"path": "n", "max": 9}]', 'ops')""",
    "summary": "SELECT sms.store_slice_summary('t', 'f', $1::jsonb, 'a summary')",  # $1: a read of the state
    "ttl": "SELECT sms.set_expiry('t', 'f', '1 hour')",
}


@pytest.mark.parametrize("write", sorted(WRITES_IN_FLIGHT))
async def test_a_purge_waits_for_a_write_in_flight_and_erases_it_too(database_url, conn, write):
    """The purge takes the state's lock and its fence: a delta, comment, alias, policy, cached
    summary or TTL being written commits first, and goes too."""
    await apply_delta(conn, {"tasks": {"T1": {"status": "OPEN"}}, "n": 1})
    writer = await asyncpg.connect(database_url)
    purger = await asyncpg.connect(database_url)
    try:
        writing = writer.transaction()
        await writing.start()
        read = [await conn.fetchval("SELECT sms.read_slice('t', 'f', 'tasks, n')::text")] if write == "summary" else []
        await writer.execute(WRITES_IN_FLIGHT[write], *read)  # holds its lock until it commits
        waits = await lock_wait(conn, purger)
        async with background(purger.fetchval("SELECT sms.purge_state('t', 'f', 'dpo')")) as purge:

            async def purge_waits() -> bool:
                return await waits() or purge.done()

            await until(purge_waits, "the purge to wait for the write in flight")
            assert not purge.done(), f"the purge did not wait for the {write} being written"
            await writing.commit()
            record = json.loads(await asyncio.wait_for(purge, WAIT_SECONDS))
    finally:
        await writer.close()
        await purger.close()
    left = {table: n for table, n in (await rows_of(conn, await tenant_tables(conn), *PURGED)).items() if n}
    assert left == {RECORD: 1}, left
    assert record["last_version"] == (2 if write == "delta" else 1)


async def test_a_summary_read_before_a_purge_is_not_cached_after_it(conn):
    await apply_delta(conn, {"tasks": {"T1": {"owner": "ann"}}})
    read = await conn.fetchval("SELECT sms.read_slice('t', 'f', 'tasks')::text")
    await conn.execute("SELECT sms.purge_state('t', 'f', 'dpo')")
    await conn.execute("SELECT sms.store_slice_summary('t', 'f', $1::jsonb, 'T1: ann')", read)
    assert await conn.fetchval("SELECT count(*) FROM sms.summary_cache") == 0


# ---------------------------------------------------------------- the feed hears it


async def test_sse_subscribers_get_a_final_purged_event_and_listeners_a_notice(database_url, live_url, conn):
    await apply_delta(conn, {"n": 1})
    await apply_delta(conn, {"n": 2})
    events: list[dict[str, str]] = []
    async with (
        listening(database_url) as heard,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
        background(sse_events(http, "/state/t/f/events?since=0", events)) as stream,
    ):
        await until(lambda: len(events) == 2 or stream.done(), "the stream's two changes")
        assert [(e["event"], e["id"]) for e in events] == [("change", "1"), ("change", "2")]
        assert (await http.delete("/state/t/f")).status_code == 200
        await asyncio.wait_for(stream, WAIT_SECONDS)  # the service ends the stream
        payload = await heard.next_payload()
        assert json.loads(payload) == {"tenant_id": "t", "fsa_id": "f", "purged": True, "version": 2}
    assert [e["event"] for e in events] == ["change", "change", "purged"]
    assert "id" not in events[-1] and "retry" not in events[-1]
    assert json.loads(events[-1]["data"]) == {"status": "purged", "tenant_id": "t", "fsa_id": "f", "last_event_id": "2"}


@pytest.mark.parametrize("notify", [True, False], ids=["notified", "polled"])
async def test_a_subscription_on_the_database_ends_with_state_purged(database_url, conn, notify):
    """Feed.subscribe (what `sms listen` runs) raises StatePurged: woken by the purge's notice, or
    finding it at its next poll when there is none."""
    await apply_delta(conn, {"n": 1})
    seen: list[int] = []
    async with Feed.connect(database_url, poll_interval=0.2) as feed:

        async def follow() -> None:
            async for change in feed.subscribe("t", "f", since=0):
                seen.append(change.version)

        async with background(follow()) as subscription:
            await until(lambda: seen == [1] and feed.readers == 1, "the subscription to catch up and join its reader")
            if not notify:
                await conn.execute("SET sms.notify = 'off'")
            await conn.execute("SELECT sms.purge_state('t', 'f', 'dpo')")
            with pytest.raises(StatePurged):
                await asyncio.wait_for(subscription, WAIT_SECONDS)
    assert seen == [1]


# ---------------------------------------------------------------- the append-only tables


async def test_append_only_tables_refuse_update_delete_and_truncate_outside_an_erasure(conn):
    await seed_everything(conn, *PURGED)
    await seed_everything(conn, *NEIGHBOUR)
    await conn.execute("SELECT sms.purge_state('t', 'g', 'dpo')")  # a record in sms.erasures
    tables = await tenant_tables(conn)
    before = await rows_of(conn, tables, *PURGED), await rows_of(conn, tables, *NEIGHBOUR)
    for table in APPEND_ONLY:
        for statement in (
            f"DELETE FROM sms.{table}",
            f"DELETE FROM sms.{table} WHERE tenant_id = 't'",
            f"UPDATE sms.{table} SET tenant_id = tenant_id",
            f"TRUNCATE sms.{table}",
        ):
            with pytest.raises(asyncpg.PostgresError) as refused:
                await conn.execute(statement)
            assert refused.value.sqlstate == "SM008", (statement, refused.value)
            assert "append-only" in str(refused.value)
    assert (await rows_of(conn, tables, *PURGED), await rows_of(conn, tables, *NEIGHBOUR)) == before


async def test_only_an_erasure_recorded_by_the_same_transaction_lets_rows_go(conn):
    await seed_everything(conn, *PURGED)
    # a record written by an earlier transaction opens nothing
    await conn.execute(
        "INSERT INTO sms.erasures (tenant_id, fsa_id, action, last_version) VALUES ('t', 'f', 'purge', 3)"
    )
    with pytest.raises(asyncpg.PostgresError) as refused:
        await conn.execute("DELETE FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'f'")
    assert refused.value.sqlstate == "SM008"
    # a compaction's record opens the log up to its version only, and nothing but the log and history
    for statement in (
        "DELETE FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'f' AND version = 2",
        "DELETE FROM sms.task_comments WHERE tenant_id = 't' AND fsa_id = 'f'",
    ):
        with pytest.raises(asyncpg.PostgresError) as refused:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO sms.erasures (tenant_id, fsa_id, action, last_version, through_version)"
                    " VALUES ('t', 'f', 'compact', 3, 1)"
                )
                await conn.execute(statement)
        assert refused.value.sqlstate == "SM008", statement
    assert await log_versions(conn) == [1, 2, 3]
    # recording the erasure first, in the same transaction, is the way through — for the owner
    # too, and the record stays
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO sms.erasures (tenant_id, fsa_id, action, actor, last_version)"
            " VALUES ('t', 'f', 'purge', 'dba', 3)"
        )
        await conn.execute("DELETE FROM sms.task_comments WHERE tenant_id = 't' AND fsa_id = 'f'")
    assert await conn.fetchval("SELECT count(*) FROM sms.task_comments WHERE tenant_id = 't'") == 0
    assert [e["actor"] for e in await erasures(conn)] == [None, "dba"]


RECORD_PURGE = "INSERT INTO sms.erasures (tenant_id, fsa_id, action, last_version) VALUES ('t', $1, 'purge', 3)"


async def test_an_erasure_another_transaction_records_opens_nothing(database_url, conn):
    """The record must be the deleting transaction's own row: not one that another transaction holds
    uncommitted, nor one that it commits while the deleting transaction runs."""
    await seed_everything(conn, *PURGED)
    other = await asyncpg.connect(database_url)
    try:
        recording = other.transaction()
        await recording.start()
        await other.execute(RECORD_PURGE, "f")
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.execute("DELETE FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'f'")
        assert refused.value.sqlstate == "SM008"
        with pytest.raises(asyncpg.PostgresError) as refused:
            async with conn.transaction():
                await conn.execute("SELECT pg_current_xact_id()")  # under way before the record commits
                await recording.commit()
                await conn.execute("DELETE FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'f'")
        assert refused.value.sqlstate == "SM008"
    finally:
        await other.close()
    assert await log_versions(conn) == [1, 2, 3]
    for special in ("0", "1", "2"):  # invalid, bootstrap, frozen: nobody's under way
        assert await conn.fetchval("SELECT sms.written_by_this_transaction($1::text::xid)", special) is False


async def test_an_erasure_recorded_in_a_subtransaction_is_the_transactions_own(conn):
    """A record written in a savepoint (a driver's nested transaction, psql's ON_ERROR_ROLLBACK) opens
    the transaction's deletes, in that savepoint, another, and after; one rolled back with its
    savepoint is gone and opens nothing."""
    await seed_everything(conn, *PURGED)
    await seed_everything(conn, *NEIGHBOUR)
    async with conn.transaction():
        async with conn.transaction():
            await conn.execute(RECORD_PURGE, "f")
            await conn.execute("DELETE FROM sms.task_comments WHERE tenant_id = 't' AND fsa_id = 'f'")
        async with conn.transaction():
            await conn.execute("DELETE FROM sms.refusals WHERE tenant_id = 't' AND fsa_id = 'f'")
        await conn.execute("DELETE FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'f'")
    assert [await conn.fetchval(f"SELECT count(*) FROM sms.{table} WHERE tenant_id = 't' AND fsa_id = 'f'")
            for table in ("task_comments", "refusals", "deltas")] == [0, 0, 0]  # fmt: skip
    with pytest.raises(asyncpg.PostgresError) as refused:
        async with conn.transaction():
            savepoint = conn.transaction()
            await savepoint.start()
            await conn.execute(RECORD_PURGE, "g")
            await savepoint.rollback()
            await conn.execute("DELETE FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'g'")
    assert refused.value.sqlstate == "SM008"
    assert await log_versions(conn, *NEIGHBOUR) == [1, 2, 3]


async def test_the_service_role_can_neither_delete_nor_record_an_erasure(database_url, conn):
    await seed_everything(conn, *PURGED)
    api = await asyncpg.connect(api_database_url(database_url))  # as the service's pool connects
    try:
        for statement in (
            "DELETE FROM sms.deltas WHERE tenant_id = 't'",
            "DELETE FROM sms.task_comments WHERE tenant_id = 't'",
            "INSERT INTO sms.erasures (tenant_id, fsa_id, action, last_version) VALUES ('t', 'f', 'purge', 3)",
            "SELECT sms.erase_state('t', 'f', 'dpo', NULL)",
        ):
            with pytest.raises(asyncpg.PostgresError) as refused:
                async with api.transaction():
                    await api.execute("SELECT sms.act_for(ARRAY['t'])")
                    await api.execute(statement)
            assert refused.value.sqlstate == "42501", (statement, refused.value)  # insufficient_privilege
        # through the functions, for a tenant it does not act for: as for anything not there
        for statement in ("SELECT sms.purge_state('t', 'f', 'dpo')", "SELECT sms.compact('t', 'f', 1)"):
            with pytest.raises(asyncpg.PostgresError) as refused:
                async with api.transaction():
                    await api.execute("SELECT sms.act_for(ARRAY['u'])")
                    await api.execute(statement)
            assert refused.value.sqlstate == "SM010", statement
    finally:
        await api.close()
    assert await version(conn) == 3 and await erasures(conn) == []


# ---------------------------------------------------------------- over HTTP


async def test_lifecycle_routes_need_an_admin_key_of_the_tenant(db, conn, make_client):
    await apply_delta(conn, {"n": 1})
    await apply_delta(conn, {"n": 2})
    await apply_delta(conn, {"n": 1}, *TWIN)
    admin = await make_key(db, ["t"], "admin", actor="dpo")
    writer = await make_key(db, ["t"], "write")
    other = await make_key(db, ["u"], "admin")
    before = await snapshot(conn)
    async with make_client(**auth_on()) as client:
        for method, path in (
            ("DELETE", "/state/t/f"),
            ("POST", "/state/t/f/compact?before_version=1"),
            ("DELETE", "/state/t/f/ttl"),
            ("GET", "/state/t/f/erasures"),
        ):
            assert_problem(await client.request(method, path, headers=bearer(writer)), 403, "insufficient-scope")
            assert_problem(await client.request(method, path, headers=bearer(other)), 404, "not-found")
        assert_problem(
            await client.put("/state/t/f/ttl", json={"expires_after": "1h"}, headers=bearer(writer)),
            403,
            "insufficient-scope",
        )
        assert await snapshot(conn) == before and await erasures(conn) == []
        response = await client.delete("/state/t/f?actor=someone-else", headers=bearer(admin))
        assert response.status_code == 200, response.text
        # the record outlives the state, and reads as the purge answered
        kept = (await client.get("/state/t/f/erasures", headers=bearer(admin))).json()
    body = response.json()
    assert kept == {"tenant_id": "t", "fsa_id": "f", "erasures": [body]}
    assert (body["tenant_id"], body["fsa_id"], body["action"]) == ("t", "f", "purge")
    assert (body["actor"], body["key_id"], body["last_version"]) == ("dpo", admin.key_id, 2)  # the key's actor
    assert await snapshot(conn) == (0, [], {})
    assert await version(conn, *TWIN) == 1


# ---------------------------------------------------------------- TTL


async def age(conn: asyncpg.Connection, tenant: str, *fsas: str) -> None:
    """The states' last delta two hours ago: past a TTL of an hour."""
    await conn.execute(
        "UPDATE sms.states SET updated_at = now() - interval '2 hours' WHERE tenant_id = $1 AND fsa_id = ANY ($2)",
        tenant,
        list(fsas),
    )


async def test_a_sweep_purges_the_states_past_their_ttl_and_keeps_active_ones(db, conn, monkeypatch):
    monkeypatch.setattr("app.db.sweeper.SWEEP_BATCH", 2)  # the expired states take three batches
    tenants = ("t", "u", "v", "w", "x")  # on Citus, spread over the workers
    for tenant in tenants:
        for fsa in ("idle", "active", "revived", "forever"):
            await apply_delta(conn, {"n": 1}, tenant, fsa)
        for fsa in ("idle", "active", "revived"):
            await conn.execute("SELECT sms.set_expiry($1, $2, '1 hour')", tenant, fsa)
        await age(conn, tenant, "idle", "revived", "forever")  # no TTL for "forever"
        await apply_delta(conn, {"n": 2}, tenant, "revived")  # a delta counts as activity

    assert await sweep_expired(db) == len(tenants)

    for tenant in tenants:
        assert await snapshot(conn, tenant, "idle") == (0, [], {})
        assert [e["actor"] for e in await erasures(conn, tenant, "idle")] == ["ttl"]
        assert [await version(conn, tenant, fsa) for fsa in ("active", "revived", "forever")] == [1, 2, 1]
    assert await sweep_expired(db) == 0  # nothing left to sweep


async def test_a_state_written_after_the_sweep_listed_it_is_kept(conn):
    """Each state is checked again under its lock: a delta that came since it was listed keeps it."""
    await apply_delta(conn, {"n": 1})
    await conn.execute("SELECT sms.set_expiry('t', 'f', '1 hour')")
    await age(conn, "t", "f")
    assert [tuple(row) for row in await conn.fetch("SELECT * FROM sms.expired_states(10)")] == [PURGED]
    await apply_delta(conn, {"n": 2})
    assert await conn.fetchval("SELECT sms.expire_state('t', 'f')") is None
    assert await version(conn) == 2 and await erasures(conn) == []
    assert await conn.fetch("SELECT * FROM sms.expired_states(10)") == []


async def test_erasures_statement_by_statement_run_on_one_server_and_are_refused_on_citus(conn):
    """SQL of one's own may purge, compact and sweep in any statement on one server. On Citus such a
    statement runs on the coordinator, where the state's writers never take its lock: it is refused
    and erases nothing — the bare call is delegated to the tenant's node."""
    for fsa in ("a", "b", "c"):
        await apply_delta(conn, {"n": 1}, "t", fsa)
        await apply_delta(conn, {"n": 2}, "t", fsa)
    await conn.execute("SELECT sms.set_expiry('t', 'c', '1 hour')")
    await age(conn, "t", "c")
    statements = (
        "SELECT sms.purge_state('t', 'a', 'dpo')::text",
        "SELECT sms.compact('t', 'b', 1)::text",
        "SELECT count(*) FROM sms.expire_states(10)",
    )
    if not ON_CITUS:
        for statement in statements:
            await conn.fetchval(statement)
        assert [await version(conn, "t", fsa) for fsa in ("a", "b", "c")] == [0, 2, 0]
        assert await log_versions(conn, "t", "b") == [2]
        return
    for statement in statements:
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.fetchval(statement)
        assert refused.value.sqlstate == "0A000", (statement, refused.value)
        assert "bare call" in str(refused.value)
    assert [await snapshot(conn, "t", fsa) for fsa in ("a", "b", "c")] == [(2, [1, 2], {"n": 2})] * 3
    assert await conn.fetchval("SELECT count(*) FROM sms.erasures") == 0


async def test_the_running_service_sweeps_expired_states_by_itself(conn, make_client):
    await apply_delta(conn, {"n": 1})
    await apply_delta(conn, {"n": 1}, *NEIGHBOUR)
    async with make_client(expiry_sweep_seconds=0.05) as client:
        for path in ("/state/t/f/ttl", "/state/t/g/ttl"):
            assert (await client.put(path, json={"expires_after": "1h"})).status_code == 200
        await conn.execute("UPDATE sms.states SET updated_at = now() - interval '2 hours' WHERE fsa_id = 'f'")

        async def gone() -> bool:
            return await conn.fetchval("SELECT count(*) FROM sms.states WHERE tenant_id = 't' AND fsa_id = 'f'") == 0

        await until(gone, "the service's sweeper to purge the expired state")
        assert (await client.get("/state/t/f")).json()["version"] == 0
    assert [e["actor"] for e in await erasures(conn)] == ["ttl"]
    assert await version(conn, *NEIGHBOUR) == 1


async def test_a_periodic_job_that_fails_is_logged_runs_again_and_runs_once_more_at_stop(caplog):
    # what runs the sweep and adds up the slice-cache hits (app.db.periodic)
    runs: list[int] = []

    async def job() -> None:
        runs.append(len(runs))
        if len(runs) == 1:
            raise database_unavailable("the database is restarting")
        if len(runs) == 2:
            raise ValueError("a bug")

    async def ran_again() -> bool:
        return len(runs) >= 3

    periodic = Periodic("the test job", job, 0.01, last=True)
    periodic.start()
    await until(ran_again, "the job to run again after failing twice")
    await periodic.stop()
    ran = len(runs)
    await asyncio.sleep(0.05)
    assert len(runs) == ran  # stopped, after its last run
    messages = [record.getMessage() for record in caplog.records if record.name == "app.db.periodic"]
    assert messages[:2] == [
        "the test job failed: the database is restarting; it runs again in 0.01 s",
        "the test job failed; it runs again in 0.01 s",
    ]
    await Periodic("never started", job, 0.01, last=True).stop()  # nothing to stop, nothing run
    assert len(runs) == ran


async def test_a_ttl_is_set_read_and_cleared_over_http(client, conn):
    await apply_delta(conn, {"n": 1})
    response = await client.put("/state/t/f/ttl", json={"expires_after": "7d"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["expires_after_seconds"] == 7 * 24 * 3600
    last = datetime.fromisoformat(body["last_write_at"])
    assert datetime.fromisoformat(body["expires_at"]) - last == timedelta(days=7)
    assert (await client.get("/state/t/f/ttl")).json() == body
    assert (await client.put("/state/t/f/ttl", json={"expires_after": "90s"})).json()["expires_after_seconds"] == 90
    cleared = (await client.put("/state/t/f/ttl", json={"expires_after": None})).json()
    assert (cleared["expires_after_seconds"], cleared["expires_at"]) == (None, None)
    await client.put("/state/t/f/ttl", json={"expires_after": "2h"})
    cleared = (await client.delete("/state/t/f/ttl")).json()
    assert (cleared["expires_after_seconds"], cleared["expires_at"]) == (None, None)
    # a state never written gets a TTL from now, and no last write
    fresh = (await client.put("/state/t/fresh/ttl", json={"expires_after": "1h"})).json()
    assert fresh["last_write_at"] is None and fresh["expires_at"] is not None
    assert await version(conn) == 1  # a TTL is no delta


@pytest.mark.parametrize(
    ("body", "status", "slug"),
    [
        ({"expires_after": "7x"}, 422, "invalid-value"),
        ({"expires_after": "0d"}, 422, "invalid-value"),
        ({"expires_after": "-1h"}, 422, "invalid-value"),
        ({"expires_after": "1000000w"}, 422, "invalid-value"),
        ({"expires_after": 3600}, 400, "malformed-request"),
        ({}, 400, "malformed-request"),
        ({"expires_after": "1h", "when": "now"}, 400, "malformed-request"),
        (["1h"], 400, "malformed-request"),
    ],
)
async def test_bad_ttls_get_their_problem_and_change_nothing(client, conn, body, status, slug):
    await apply_delta(conn, {"n": 1})
    await client.put("/state/t/f/ttl", json={"expires_after": "2h"})
    before = (await client.get("/state/t/f/ttl")).json()
    assert_problem(await client.put("/state/t/f/ttl", json=body), status, slug)
    assert (await client.get("/state/t/f/ttl")).json() == before
    assert await version(conn) == 1


# ---------------------------------------------------------------- compaction

DELTAS = [
    {"tasks": {"A": {"s": "OPEN"}, "B": 1}, "n": 0.1, "tags": ["x"]},
    {"tasks.A.s": "DONE", "n": {"$inc": 0.2}, "tags": {"$add": ["y", "x"]}},
    {"tasks": {"$merge": {"B": None, "C": {"k": [1]}}}, "hist": {"$push": {"$each": [1, 2, 3], "$slice": -2}}},
    {"lo": {"$min": 3}, "hi": {"$max": "b"}, "tags": {"$pull": "x"}},
    {"tasks.C.k": {"$unset": True}, "n": {"$merge": {"now": "object"}}},
    {"tasks.D": {"s": "OPEN"}, "gone": 1},
    {"gone": {"$unset": True}, "lo": {"$min": 1}, "tasks.A.s": "REOPENED"},
    {"hist": {"$push": 4}, "tasks": {"$merge": {"E": {}}}},
]


async def test_replaying_the_kept_log_on_the_compaction_snapshot_gives_the_state(conn):
    await conn.execute("SET sms.snapshot_every = 3")  # snapshots at 3 (dropped) and 6 (kept)
    for delta in DELTAS:
        await apply_delta(conn, delta)
    at = {v: await conn.fetchval("SELECT sms.document_at('t', 'f', $1)::text", v) for v in range(len(DELTAS) + 1)}
    current = await document(conn)

    record = json.loads(await conn.fetchval("SELECT sms.compact('t', 'f', 5, 'ops')"))

    assert (record["action"], record["actor"], record["through_version"], record["last_version"]) == (
        "compact", "ops", 5, 8
    )  # fmt: skip
    assert record["removed"]["deltas"] == 5 and record["removed"]["snapshots"] == 1
    assert await log_versions(conn) == [6, 7, 8]
    assert await conn.fetch("SELECT version FROM sms.snapshots WHERE tenant_id = 't' ORDER BY 1") == [(5,), (6,)]
    assert await conn.fetchval("SELECT sms.log_start('t', 'f')") == 5
    for v in range(5, len(DELTAS) + 1):  # time travel from the snapshot on is what it was
        assert await conn.fetchval("SELECT sms.document_at('t', 'f', $1)::text", v) == at[v], v
    # replay: the snapshot, then the kept log
    at_5 = await conn.fetchval("SELECT sms.document_at('t', 'f', 5)::text")
    await conn.execute("SELECT sms.replace_state('replay', 'f', $1::jsonb)", at_5)
    for row in await log_rows(conn):
        delta = await conn.fetchval("SELECT sms.ops_to_delta($1::jsonb)::text", json.dumps(row["ops"]))
        await apply_delta(conn, delta, tenant="replay")
    assert await document(conn, tenant="replay") == current == await document(conn)
    assert [e["action"] for e in await erasures(conn)] == ["compact"]


async def test_reads_from_before_the_compaction_are_history_compacted_and_after_it_work(client, conn):
    for n in range(1, 7):
        await apply_delta(conn, {"n": n, f"k{n}": True})
    response = await client.post("/state/t/f/compact?before_version=4&actor=ops")
    assert response.status_code == 200, response.text
    assert (response.json()["action"], response.json()["through_version"]) == ("compact", 4)

    for method, path in (
        ("GET", "/state/t/f?version=3"),
        ("GET", "/state/t/f?version=0"),
        ("GET", "/state/t/f/diff?from=3&to=6"),
        ("GET", "/state/t/f/changes?since=3"),
        ("GET", "/state/t/f/deltas?since=3"),
        ("GET", "/state/t/f/events?since=3"),
        ("POST", "/state/t/f/rollback?to_version=3"),
    ):
        body = assert_problem(await client.request(method, path), 404, "history-compacted")
        assert body["history_from"] == 4, (path, body)

    at_4 = {"n": 4, "k1": True, "k2": True, "k3": True, "k4": True}
    assert (await client.get("/state/t/f?version=4")).json()["state"] == at_4
    assert (await client.get("/state/t/f?version=6")).json()["state"] == await document(conn)
    assert [d["version"] for d in (await client.get("/state/t/f/deltas?since=0")).json()["deltas"]] == [5, 6]
    assert [d["version"] for d in (await client.get("/state/t/f/deltas?since=4")).json()["deltas"]] == [5, 6]
    assert (await client.get("/state/t/f/changes?since=4")).json()["deltas"] == 2
    patch = (await client.get("/state/t/f/diff?from=4&to=6")).json()["patch"]
    assert {step["path"] for step in patch} == {"/n", "/k5", "/k6"}
    # a path's history still says what its first kept change changed it from
    changes = (await client.get("/state/t/f/history?path=n")).json()["changes"]
    assert [(c["version"], c.get("old"), c["new"]) for c in changes] == [(6, 5, 6), (5, 4, 5)]


@pytest.mark.parametrize(
    ("query", "status", "slug"),
    [
        ("?before_version=-1", 400, "malformed-request"),
        ("?before_version=0", 400, "malformed-request"),
        ("?before_version=x", 400, "malformed-request"),
        ("", 400, "malformed-request"),
        ("?before_version=5", 404, "not-found"),  # beyond the current version, 4
        ("?before_version=1", 404, "history-compacted"),  # before the earlier compaction, at 2
    ],
)
async def test_bad_compactions_get_their_problem_and_change_nothing(client, conn, query, status, slug):
    for n in range(1, 5):
        await apply_delta(conn, {"n": n})
    assert (await client.post("/state/t/f/compact?before_version=2")).status_code == 200
    before = await snapshot(conn), await erasures(conn)
    assert_problem(await client.post("/state/t/f/compact" + query), status, slug)
    assert (await snapshot(conn), await erasures(conn)) == before


async def test_compacting_in_sql_checks_its_version_like_the_api(conn):
    await apply_delta(conn, {"n": 1})
    for before_version, sqlstate in ((0, "22023"), (-3, "22023"), (None, "22023"), (2, "SM010")):
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.execute("SELECT sms.compact('t', 'f', $1)", before_version)
        assert refused.value.sqlstate == sqlstate, before_version
    # at the current version: the whole log goes, the state stays
    record = json.loads(await conn.fetchval("SELECT sms.compact('t', 'f', 1)"))
    assert record["removed"]["deltas"] == 1
    assert await snapshot(conn) == (1, [], {"n": 1})
    assert await conn.fetchval("SELECT sms.document_at('t', 'f', 1)::text") == '{"n": 1}'
    assert (await apply_delta(conn, {"n": 2}))["version"] == 2
