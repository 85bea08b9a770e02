"""Read replicas with read-your-writes (SMS_READ_DATABASE_URL), against a REAL streaming replica.

The replica is a hot standby of the test server, made with pg_basebackup from the server's own
binaries (app.replica), replaying its WAL as it streams in. To make it lag on purpose, its replay
is paused (pg_wal_replay_pause): writes then reach the primary only, and what each read answers
tells which server answered it — a version the paused replica has, or the primary's newer one.

A server that does not allow replication connections (no `replication` line in its pg_hba.conf)
cannot be replicated: these tests are then skipped, saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from helpers import ON_CITUS, TENANT, add_up_hits, apply_delta

from app.db.listener import Listener
from app.db.queries import Database, RoleError
from app.db.roles import api_database_url
from app.feed import Feed
from app.replica import Replica, ReplicaUnavailable, streaming_replica
from app.settings import Settings

FSA = "f"
SHORT_WAIT_MS = 200  # how long reads wait for the paused replica before the primary answers
FEED_WAIT_SECONDS = 30.0  # the most a feed may take to deliver what the tests wait for


@pytest.fixture(scope="session")
def replica(pg_server) -> Iterator[Replica]:
    """A streaming replica of the test server for the whole session."""
    if ON_CITUS:
        pytest.skip("on Citus a replica of the coordinator holds none of the workers' shards (docs/scale-out.md)")
    try:
        with streaming_replica(pg_server.url("postgres")) as running:
            yield running
    except ReplicaUnavailable as reason:
        pytest.skip(f"the test server cannot be replicated here: {reason}")


@pytest.fixture
def primary_url(pg_server) -> str:
    return pg_server.url("postgres")


@pytest.fixture
def replica_url(replica: Replica, primary_url: str, database_url: str) -> str:
    """This test's database on the replica, as the service's role, once the replica has it."""
    replica.wait_for(primary_url)
    return replica.url(str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]), "sms_api")


@pytest.fixture
def replicated(replica_url: str) -> dict[str, Any]:
    """The settings of a service reading from the replica, waiting SHORT_WAIT_MS for it to catch up."""
    return {"read_database_urls": (replica_url,), "read_wait_ms": SHORT_WAIT_MS}


@contextlib.contextmanager
def replay_paused(replica: Replica, primary_url: str) -> Iterator[None]:
    """The replica caught up, then replaying nothing more until the block ends."""
    replica.wait_for(primary_url)
    with psycopg.connect(replica.url("postgres"), autocommit=True) as standby:
        standby.execute("SELECT pg_wal_replay_pause()")
        while standby.execute("SELECT pg_get_wal_replay_pause_state()").fetchone()[0] != "paused":
            pass
        try:
            yield
        finally:
            standby.execute("SELECT pg_wal_replay_resume()")


async def write(client, delta: dict, fsa: str = FSA) -> int:
    response = await client.post(f"/state/{TENANT}/{fsa}/delta", json=delta)
    assert response.status_code == 200, response.text
    return response.json()["version"]


async def slice_at(client, **params) -> tuple[int, str]:
    """(the version a slice of tasks.T1 was read at, T1's status there)."""
    response = await client.get(f"/state/{TENANT}/{FSA}/slice", params={"slice": "task:T1", **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["etag"] == f'"{body["version"]}"'
    return body["version"], body["slice"]["tasks"]["T1"]["status"]


async def test_a_read_with_min_version_waits_for_the_replica_or_the_primary_answers(
    make_client, replicated, replica, primary_url
):
    async with make_client(**replicated) as client:
        await write(client, {"tasks.T1.status": "OPEN"})
        with replay_paused(replica, primary_url):
            written = await write(client, {"tasks.T1.status": "DONE"})
            assert written == 2
            # no min_version: the lagging replica answers, and says which version it read
            assert await slice_at(client) == (1, "OPEN")
            # the replica does not catch up within the wait: the primary answers
            assert await slice_at(client, min_version=written) == (2, "DONE")
        with replay_paused(replica, primary_url):
            assert await write(client, {"tasks.T1.status": "CLOSED"}) == 3
            # the replica has version 2 (the primary is at 3): it answers
            assert await slice_at(client, min_version=2) == (2, "DONE")
            assert await slice_at(client, min_version=1) == (2, "DONE")
            assert await slice_at(client, min_version=3) == (3, "CLOSED")


async def test_cache_hits_answered_by_a_replica_are_counted_on_the_primary(
    make_client, replicated, replica, primary_url, conn
):
    async with make_client(**replicated) as client:
        await write(client, {"tasks.T1.status": "OPEN"})
        await slice_at(client, min_version=1)  # a miss: the summary is stored on the primary
        # stored with a relaxed commit: a write's commit flushes its WAL, which the replica then replays
        await write(client, {"n": 1}, fsa="other")
        with replay_paused(replica, primary_url):
            assert await write(client, {"tasks.T2.status": "OPEN"}) == 2  # the primary moves on
            for _ in range(3):
                assert await slice_at(client) == (1, "OPEN")  # the lagging replica answers, from its cache
            assert await add_up_hits(client) == 1
            assert await conn.fetchval("SELECT hits FROM sms.summary_cache") == 3


async def test_a_write_then_a_read_with_its_version_returns_it(make_client, replicated):
    async with make_client(**(replicated | {"read_wait_ms": 5000})) as client:
        for n in range(1, 6):
            written = await write(client, {"tasks.T1.status": f"S{n}"})
            version, status = await slice_at(client, min_version=written)
            assert version >= written and status == f"S{n}"


async def test_whole_states_history_and_the_log_never_answer_from_before_the_version_they_name(
    make_client, replicated, replica, primary_url
):
    base = f"/state/{TENANT}/{FSA}"
    async with make_client(**replicated) as client:
        await write(client, {"tasks.T1.status": "OPEN"})
        with replay_paused(replica, primary_url):
            await write(client, {"tasks.T1.status": "DONE"})

            async def get(route: str, **params) -> dict:
                response = await client.get(base + route, params=params)
                assert response.status_code == 200, response.text
                return response.json()

            # stale without a version named, and saying so; current with min_version
            assert (await get(""))["version"] == 1
            assert (await get("", min_version=2))["state"]["tasks"]["T1"]["status"] == "DONE"
            assert (await get("", summary="true"))["version"] == 1
            assert (await get("", summary="true", min_version=2))["version"] == 2
            assert [d["version"] for d in (await get("/deltas"))["deltas"]] == [1]
            assert [d["version"] for d in (await get("/deltas", min_version=2))["deltas"]] == [1, 2]
            assert len((await get("/history", path="tasks.T1.status"))["changes"]) == 1
            assert len((await get("/history", path="tasks.T1.status", min_version=2))["changes"]) == 2
            assert (await get("/changes", since=1, min_version=2))["version"] == 2
            # a version the request names itself is never read from a replica that lacks it
            assert (await get("", version=2))["state"]["tasks"]["T1"]["status"] == "DONE"
            assert (await get("/deltas", since=2))["version"] == 2
            assert (await get("/changes", since=2))["version"] == 2
            assert (await get("/diff", **{"from": 1}))["patch"] == [
                {"op": "replace", "path": "/tasks/T1/status", "value": "DONE"}
            ]
            not_modified = await client.get(base, headers={"If-None-Match": '"2"'})
            assert not_modified.status_code == 304 and not_modified.headers["etag"] == '"2"'


async def test_a_bad_min_version_is_a_400_and_changes_nothing(make_client, replicated, conn):
    async with make_client(**replicated) as client:
        await write(client, {"tasks.T1.status": "OPEN"})
        for bad in ("-1", "x", str(2**53)):
            response = await client.get(f"/state/{TENANT}/{FSA}/slice", params={"slice": "task:*", "min_version": bad})
            assert response.status_code == 400, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
    assert await conn.fetchval("SELECT sms.current_version($1, $2)", TENANT, FSA) == 1


async def test_a_replica_that_is_down_leaves_the_reads_to_the_primary(make_client, replicated, replica):
    async with make_client(**replicated) as client:
        written = await write(client, {"tasks.T1.status": "OPEN"})
        replica.stop()
        try:
            assert await slice_at(client) == (written, "OPEN")
            assert await slice_at(client, min_version=written) == (written, "OPEN")
            response = await client.get(f"/state/{TENANT}/{FSA}")
            assert response.status_code == 200 and response.json()["version"] == written
        finally:
            replica.start()


async def test_the_service_refuses_a_replica_role_that_row_level_security_does_not_bind(
    make_client, settings, replica, primary_url, database_url
):
    replica.wait_for(primary_url)
    owner = replica.url(str(psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]))  # the superuser
    refused = pytest.RaisesExc(RoleError, match="not bound by row-level security")
    # the test client's task group wraps what the lifespan raised
    with pytest.RaisesGroup(refused, allow_unwrapped=True, flatten_subgroups=True):
        async with make_client(read_database_urls=(owner,)):
            pass


async def test_the_feed_through_a_lagging_replica_delivers_every_version_once_and_in_order(
    database_url, replica_url, replica, primary_url, conn
):
    """A reader on the replica, a subscriber that caught up on the primary joining it while the
    replica lags, and a tenant feed: each gets every version exactly once, in order; and once the
    replica catches up, without waiting for the poll (an hour here)."""
    api_url = api_database_url(database_url)
    reading = await Database.connect(api_url, min_size=1, max_size=4, read_dsns=[replica_url])
    primary = Database(reading.pool, reading.tenants)  # the same primary, no replica
    listener = Listener(api_url)
    await listener.start()
    feed = Feed(reading.acting_for([TENANT]), listener, poll_interval=3600)
    seen: dict[str, list[tuple[str, int]]] = {"a": [], "b": [], "tenant": []}

    arrived = asyncio.Event()

    async def follow(name: str, fsa: str | None, db: Database | None = None) -> None:
        async for change in feed.subscribe(TENANT, fsa, since=0, db=db):
            seen[name].append((change.fsa_id, change.version))
            arrived.set()

    async def until(name: str, count: int) -> None:
        async with asyncio.timeout(FEED_WAIT_SECONDS):
            while True:
                arrived.clear()
                if len(seen[name]) >= count:
                    return
                await arrived.wait()

    tasks = [asyncio.create_task(follow("a", FSA)), asyncio.create_task(follow("tenant", None))]
    try:
        for n in range(3):
            await apply_delta(conn, {"n": n})
            await apply_delta(conn, {"n": n}, fsa="g")
        await until("a", 3)
        with replay_paused(replica, primary_url):
            for n in range(3, 6):
                await apply_delta(conn, {"n": n})
                await apply_delta(conn, {"n": n}, fsa="g")
            # caught up on the primary, then joins the reader of the lagging replica
            tasks.append(asyncio.create_task(follow("b", FSA, primary.acting_for([TENANT]))))
            await until("b", 6)
        await apply_delta(conn, {"n": 6})
        for name in ("a", "b"):
            await until(name, 7)
        await until("tenant", 13)
        await asyncio.sleep(0.2)  # time to show a repeat, were there one
    finally:
        feed.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.stop()
        await reading.close()
    assert seen["a"] == seen["b"] == [(FSA, v) for v in range(1, 8)]
    tenant = seen["tenant"]
    assert sorted(tenant) == sorted([(FSA, v) for v in range(1, 8)] + [("g", v) for v in range(1, 7)])
    for fsa in (FSA, "g"):
        versions = [v for f, v in tenant if f == fsa]
        assert versions == sorted(versions)


def test_read_urls_are_split_at_commas_that_start_a_url(monkeypatch):
    monkeypatch.setenv(
        "SMS_READ_DATABASE_URL", "postgresql://sms_api@r1,r2:5433/sms, postgres://sms_api@r3/sms,postgresql://r4/sms"
    )
    assert Settings.from_env().read_database_urls == (
        "postgresql://sms_api@r1,r2:5433/sms",
        "postgres://sms_api@r3/sms",
        "postgresql://r4/sms",
    )
