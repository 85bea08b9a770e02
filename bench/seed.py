"""Seed benchmark: the seed's own tables, with this service beside the two designs it replaces.

The seed's tables — a slice instead of the whole state, five agents each reading its own slice,
cached summaries, merge latency by state size, and lost updates under concurrent increments —
reproduced in one run for three systems:

ours      this service over HTTP: uvicorn serving app.asgi in a process of its own, one keep-alive
          connection, one request at a time (the raw client of bench.throughput: httpx would
          spend more CPU per request than a cached slice costs the server).
original  the original design: the whole state as one JSON string in Redis, read-modify-written
          in Python — GET, json.loads, change, json.dumps, SET; no WATCH, as the original did.
naive PG  one JSONB value per state in a table of its own (naive_states), read-modify-written
          from Python — SELECT, change, UPDATE, each its own transaction, no row lock.

The baselines are called in this process with no HTTP in between, which flatters them. They have
no slices: a slice reads the whole document and filters it in Python, and a summary is made on
every read with the service's own functions (app.domain.summary). A read is timed until its bytes
are in hand (a full read is not decoded on any system; a baseline's slice is, as it must be to be
filtered). Beside our reads, GET /health times their floor: a request with one round trip to the
database that reads nothing. States are bench.common.make_state at about 10 KB, 100 KB and 1 MB;
every cell is measured in rounds that visit all sizes and systems in turn, so that a noisy minute
on a shared machine hits them all alike; the naive table is vacuumed (untimed) after each of its
cells, so that the cleanup of its 1 MB rewrites does not land on the next system's cell.

Redis: SMS_BENCH_REDIS_URL or redis://127.0.0.1:6379/0, under a key prefix of this run, deleted at
the end. PostgreSQL: a scratch database on the server of SMS_DATABASE_URL or on an embedded
PostgreSQL 18 in a temporary directory.

    python -m bench seed [--quick] [--json PATH]
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import contextlib
import dataclasses
import fnmatch
import functools
import itertools
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlencode

import asyncpg

from app.domain.summary import slice_body, slice_header, slice_summary
from bench.common import (
    PHASES,
    STATUSES,
    add_arguments,
    format_table,
    json_size,
    machine_info,
    make_state,
    percentile,
    run_measure,
    scratch_database,
)
from bench.report import Chart, Check, Section, finish, markdown_table
from bench.report import progress as progress_bar
from bench.service import HttpConnection, http_request, served, uvicorn

TENANT = "bench-seed"
SIZES = {"10 KB": 10 * 1024, "100 KB": 100 * 1024, "1 MB": 1024 * 1024}
SLICE_CHECKED_AT, MERGE_CHECKED_AT = "100 KB", "1 MB"
K = 5  # entries per agent's slice, as the seed's agents ask
MAX_TOKENS = 300  # the service's default summary budget; the baselines' summaries get the same
INCREMENTS = 200  # concurrent $inc of one counter in the lost-update test
COUNTER = "metrics.tasks_done"
COUNTER_STATE = "seed-counter"  # a state of SLICE_CHECKED_AT's size for the lost-update test
NAIVE_POOL = 20  # the naive baseline's connections: the service's own pool size
REDIS_URL = os.environ.get("SMS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
# uvicorn, 1 worker, keeping an idle connection for longer than its default 5 s: the benchmark's one
# connection idles while the baselines are measured (tens of seconds at 1 MB)
SERVER = dataclasses.replace(uvicorn(1), argv=(*uvicorn(1).argv, "--timeout-keep-alive", "3600"))
SYSTEMS = {"ours": "ours (HTTP)", "original": "original (Redis doc)", "naive": "naive PG (one jsonb)"}
COLORS = {"ours": "tab:green", "original": "tab:red", "naive": "tab:blue"}
QUANTILES = (("p50", "-"), ("p99", ":"))


@dataclass(frozen=True)
class Slice:
    """An agent's slice: the members of a collection whose keys match a glob, the first K by key."""

    spec: str  # as the service reads it
    collection: str
    glob: str


AGENT_SLICES = {phase: Slice(f"task:{phase}_*", "tasks", f"{phase}_*") for phase in PHASES}
FOCUS = "DESIGN"  # task:DESIGN_*, the seed's example slice: the slice and summary tables use it
FLOOR = "floor"  # ours only: GET /health, the cost of a request with one round trip to the database


@dataclass(frozen=True)
class Plan:
    """How many timed calls per state size, system and operation, in how many rounds."""

    iterations: int
    rounds: int
    warmup: int  # untimed calls per cell before the rounds


FULL = Plan(iterations=400, rounds=4, warmup=10)
QUICK = Plan(iterations=30, rounds=2, warmup=3)


# What the baselines do in Python


def slice_in_python(state: dict[str, Any], part: Slice) -> dict[str, Any]:
    """The slice as the service's sms.read_slice_parts shapes it (so that app.domain.summary can
    summarise it), computed the only way a whole-document store can: by filtering the document.
    Globs match case-insensitively; keys are ordered folded, then exact, like the service's."""
    members = state.get(part.collection) or {}
    pattern = part.glob.lower()
    matched = sorted(
        (key for key in members if fnmatch.fnmatchcase(key.lower(), pattern)), key=lambda k: (k.lower(), k)
    )
    kept = matched[:K]
    statuses = Counter(members[key].get("status") for key in matched if isinstance(members[key], dict))
    statuses.pop(None, None)
    return {
        "slice": {part.collection: {key: members[key] for key in kept}} if kept else {},
        "total": len(matched),
        "truncated": len(kept) < len(matched),
        "parts": [
            {
                "spec": part.spec,
                "collection": part.collection,
                "path": [],
                "whole": False,
                "matched": len(matched),
                "returned": len(kept),
                "status_counts": dict(statuses) or None,
                "members": kept,
            }
        ],
    }


def summary_in_python(fsa_id: str, part: Slice, read: dict[str, Any]) -> str:
    """The slice's summary made by the service's functions, as a baseline must on every read. The
    documents carry no version: the header says v0."""
    header = slice_header(TENANT, fsa_id, 0, part.spec, read)
    return slice_summary(header, slice_body(read, header, MAX_TOKENS), MAX_TOKENS)


def apply_in_python(state: dict[str, Any], delta: dict[str, Any]) -> None:
    """The original service's merge, for what these deltas use: a dotted path set to a value, or
    increased by {"$inc": n}; missing objects on the way are created."""
    for path, change in delta.items():
        *parents, leaf = path.split(".")
        target = state
        for key in parents:
            target = target.setdefault(key, {})
        if isinstance(change, dict) and "$inc" in change:
            target[leaf] = target.get(leaf, 0) + change["$inc"]
        else:
            target[leaf] = change


def value_at(state: dict[str, Any], path: str) -> Any:
    """The value at a dotted path (the lost-update counter)."""
    for key in path.split("."):
        state = state[key]
    return state


# The states


@dataclass
class Subject:
    """One state size: the state's id (the same in all three systems), its size, and the stream of
    small deltas that the merges of all systems take from."""

    label: str
    fsa_id: str
    json_bytes: int
    tasks: list[str]
    focus_key: str  # the first member of the focus slice: a delta on it makes the next summary a miss
    matched: dict[str, int]  # per phase, how many tasks its slice matches
    sent: Iterator[int] = field(default_factory=itertools.count)

    @classmethod
    def of(cls, label: str, state: dict[str, Any]) -> Subject:
        reads = {phase: slice_in_python(state, part) for phase, part in AGENT_SLICES.items()}
        return cls(
            label=label,
            fsa_id=f"seed-{label.replace(' ', '').lower()}",
            json_bytes=json_size(state),
            tasks=sorted(state["tasks"]),
            focus_key=reads[FOCUS]["parts"][0]["members"][0],
            matched={phase: read["total"] for phase, read in reads.items()},
        )

    def next_delta(self) -> dict[str, Any]:
        """A small $set and $inc, ~80 bytes, on a task that moves through the state."""
        number = next(self.sent)
        task = self.tasks[number * 7919 % len(self.tasks)]
        return {f"tasks.{task}.status": STATUSES[number % len(STATUSES)], "metrics.ctr": {"$inc": 0.2}}


@dataclass(frozen=True)
class Op:
    """One timed call, with what must happen untimed before each call (a delta that invalidates
    the cached summary) and a check of each result, made after the timing."""

    call: Callable[[], Awaitable[Any]]
    before_each: Callable[[], Awaitable[Any]] | None = None
    check: Callable[[Any], None] | None = None


def expect_cached(cached: bool) -> Callable[[bytes], None]:
    """Checks that a slice answer's summary came from the cache, or not, as the cell intends."""

    def check(body: bytes) -> None:
        if json.loads(body)["cached"] is not cached:
            raise RuntimeError(f"expected a summary cache {'hit' if cached else 'miss'}: {body[:300]!r}")

    return check


# The three systems


class Service:
    """This service over HTTP, on one keep-alive connection (one request at a time)."""

    name = "ours"

    def __init__(self, port: int, connection: HttpConnection) -> None:
        self._port = port
        self._connection = connection

    async def _send(self, request: bytes) -> bytes:
        status, body = await self._connection.exchange(request)
        if status != 200:
            raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
        return body

    def operations(self, subject: Subject) -> dict[str, Op]:
        state = f"/state/{TENANT}/{subject.fsa_id}"
        slices = {
            phase: http_request("GET", f"{state}/slice?" + urlencode({"slice": part.spec, "k": K}))
            for phase, part in AGENT_SLICES.items()
        }
        touch = json.dumps({f"tasks.{subject.focus_key}.estimate": {"$inc": 1}}).encode()

        async def merge() -> bytes:
            return await self._send(http_request("POST", f"{state}/delta", json.dumps(subject.next_delta()).encode()))

        return {
            # the least a read of ours costs here: a request with one round trip to the database
            FLOOR: Op(functools.partial(self._send, http_request("GET", "/health"))),
            "full": Op(functools.partial(self._send, http_request("GET", state))),
            **{
                f"slice {phase}": Op(functools.partial(self._send, request), check=expect_cached(True))
                for phase, request in slices.items()
            },
            "summary": Op(
                functools.partial(self._send, slices[FOCUS]),
                before_each=functools.partial(self._send, http_request("POST", f"{state}/delta", touch)),
                check=expect_cached(False),
            ),
            "merge": Op(merge),
        }

    async def increment_concurrently(self, fsa_id: str, count: int) -> None:
        """`count` clients, each on its own connection, send one $inc at the same moment."""
        request = http_request("POST", f"/state/{TENANT}/{fsa_id}/delta", json.dumps({COUNTER: {"$inc": 1}}).encode())
        connections = [await HttpConnection.open(self._port) for _ in range(count)]
        try:
            answers = await asyncio.gather(*(connection.exchange(request) for connection in connections))
        finally:
            for connection in connections:
                connection.close()
        refused = [status for status, _ in answers if status != 200]
        if refused:
            raise RuntimeError(f"{len(refused)} of {count} increments were refused: {refused[:5]}")

    async def counter(self, fsa_id: str) -> float:
        body = await self._send(http_request("GET", f"/state/{TENANT}/{fsa_id}"))
        return value_at(json.loads(body)["state"], COUNTER)

    async def settle(self) -> None:
        """Nothing to clean up after a cell: the service's own upkeep is its own cost."""


class DocumentStore(abc.ABC):
    """A baseline: each state is one JSON document, read whole and written whole from Python."""

    name: str

    @abc.abstractmethod
    async def load(self, fsa_id: str, state: dict[str, Any]) -> None: ...

    @abc.abstractmethod
    async def get(self, fsa_id: str) -> bytes | str: ...

    @abc.abstractmethod
    async def put(self, fsa_id: str, text: str) -> None: ...

    async def read_slice(self, fsa_id: str, part: Slice) -> dict[str, Any]:
        return slice_in_python(json.loads(await self.get(fsa_id)), part)

    async def summarize(self, fsa_id: str, part: Slice) -> str:
        return summary_in_python(fsa_id, part, await self.read_slice(fsa_id, part))

    async def merge(self, fsa_id: str, delta: dict[str, Any]) -> None:
        """Read, change in Python, write back: a concurrent writer's change in between is lost."""
        state = json.loads(await self.get(fsa_id))
        apply_in_python(state, delta)
        await self.put(fsa_id, json.dumps(state, separators=(",", ":")))

    def operations(self, subject: Subject) -> dict[str, Op]:
        fsa_id = subject.fsa_id
        return {
            "full": Op(functools.partial(self.get, fsa_id)),
            **{
                f"slice {phase}": Op(functools.partial(self.read_slice, fsa_id, part))
                for phase, part in AGENT_SLICES.items()
            },
            "summary": Op(functools.partial(self.summarize, fsa_id, AGENT_SLICES[FOCUS])),
            "merge": Op(lambda: self.merge(fsa_id, subject.next_delta())),
        }

    async def increment_concurrently(self, fsa_id: str, count: int) -> None:
        await asyncio.gather(*(self.merge(fsa_id, {COUNTER: {"$inc": 1}}) for _ in range(count)))

    async def counter(self, fsa_id: str) -> float:
        return value_at(json.loads(await self.get(fsa_id)), COUNTER)

    @abc.abstractmethod
    async def settle(self) -> None:
        """What to do, untimed, after a cell of this system, before the next system's cell."""


class RedisDocuments(DocumentStore):
    """The original design: the document as a JSON string under a key of its own in Redis."""

    name = "original"

    def __init__(self, client: Any, prefix: str) -> None:
        self._client = client
        self._prefix = prefix

    async def load(self, fsa_id: str, state: dict[str, Any]) -> None:
        await self.put(fsa_id, json.dumps(state, separators=(",", ":")))

    async def get(self, fsa_id: str) -> bytes:
        return await self._client.get(self._prefix + fsa_id)

    async def put(self, fsa_id: str, text: str) -> None:
        await self._client.set(self._prefix + fsa_id, text)

    async def settle(self) -> None:
        """Nothing: a SET frees the old string at once."""


class NaiveDocuments(DocumentStore):
    """Naive PostgreSQL: the document as one JSONB value per row, each statement its own transaction."""

    name = "naive"
    SCHEMA = "CREATE TABLE naive_states (id text PRIMARY KEY, doc jsonb NOT NULL)"

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load(self, fsa_id: str, state: dict[str, Any]) -> None:
        await self._pool.execute("INSERT INTO naive_states (id, doc) VALUES ($1, $2::jsonb)", fsa_id, json.dumps(state))

    async def get(self, fsa_id: str) -> str:
        return await self._pool.fetchval("SELECT doc FROM naive_states WHERE id = $1", fsa_id)

    async def put(self, fsa_id: str, text: str) -> None:
        await self._pool.execute("UPDATE naive_states SET doc = $2::jsonb WHERE id = $1", fsa_id, text)

    async def settle(self) -> None:
        """Vacuums the table: a cell's merges leave up to hundreds of dead 1 MB TOASTed documents,
        and autovacuum's work on them would otherwise land on the next cell, another system's."""
        await self._pool.execute("VACUUM naive_states")


System = Service | DocumentStore


@contextlib.asynccontextmanager
async def redis_documents() -> AsyncIterator[tuple[RedisDocuments, str]]:
    """The original design's store under a key prefix of this run, whose keys are deleted at the
    end; and Redis's version."""
    import redis.asyncio  # the `bench` extra: only this benchmark needs it

    # a connection per concurrent increment: at the pool's default of 100, the rest would be refused
    client = redis.asyncio.Redis.from_url(REDIS_URL, max_connections=INCREMENTS)
    prefix = f"sms-bench-seed:{uuid.uuid4().hex[:12]}:"
    try:
        try:
            version = (await client.info("server"))["redis_version"]
        except redis.exceptions.ConnectionError as error:
            raise RuntimeError(f"no Redis at {REDIS_URL} (start redis-server or set SMS_BENCH_REDIS_URL)") from error
        yield RedisDocuments(client, prefix), version
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


# Measuring


async def timed(op: Op, count: int) -> tuple[list[float], Any]:
    """`count` calls one after the other (after one untimed call, which warms the cache a slice cell
    reads); the latency of each in ms, and the last result. Results are checked after the timing."""
    results = [await op.call()]
    samples = []
    for _ in range(count):
        if op.before_each is not None:
            await op.before_each()
        start = time.perf_counter()
        results.append(await op.call())
        samples.append((time.perf_counter() - start) * 1000)
    if op.check is not None:
        for result in results[1:]:
            op.check(result)
    return samples, results[-1]


@dataclass
class Samples:
    """Latencies (ms) by (size, system, operation), and the size of each cell's result when it is
    text: the bytes a read received (a baseline's summary: its characters)."""

    latency: dict[tuple[str, str, str], list[float]] = field(default_factory=dict)
    received: dict[tuple[str, str, str], int] = field(default_factory=dict)

    async def measure(self, subject: Subject, system: System, count: int) -> None:
        for name, op in system.operations(subject).items():
            key = (subject.label, system.name, name)
            samples, result = await timed(op, count)
            self.latency.setdefault(key, []).extend(samples)
            if isinstance(result, bytes | str):
                self.received[key] = len(result)

    def summary(self) -> dict[str, Any]:
        """{size: {system: {operation: {p50_ms, p99_ms, samples[, bytes]}}}}"""
        out: dict[str, Any] = {}
        for (size, system, name), samples in self.latency.items():
            cell = {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99), "samples": len(samples)}
            if (size, system, name) in self.received:
                cell["bytes"] = self.received[size, system, name]
            out.setdefault(size, {}).setdefault(system, {})[name] = cell
        return out


async def lost_updates(system: System, fsa_id: str) -> dict[str, Any]:
    """INCREMENTS concurrent $inc of one counter that starts at 0: how many the counter lost."""
    start = time.perf_counter()
    await system.increment_concurrently(fsa_id, INCREMENTS)
    elapsed = time.perf_counter() - start
    final = await system.counter(fsa_id)
    return {"sent": INCREMENTS, "final": final, "lost": INCREMENTS - final, "elapsed_ms": elapsed * 1000}


async def store(conn: asyncpg.Connection, baselines: list[DocumentStore], fsa_id: str, state: dict[str, Any]) -> None:
    """The same state in all three systems (ours through sms.replace_state, like the other benchmarks)."""
    await conn.fetchval("SELECT sms.replace_state($1, $2, $3::jsonb)", TENANT, fsa_id, json.dumps(state))
    for baseline in baselines:
        await baseline.load(fsa_id, state)


async def load_states(
    conn: asyncpg.Connection, baselines: list[DocumentStore], tick: Callable[[], Any]
) -> list[Subject]:
    """A state per size, and COUNTER_STATE for the lost-update test, in all three systems."""
    subjects = []
    for label, target in SIZES.items():
        state = make_state(target)
        subjects.append(Subject.of(label, state))
        await store(conn, baselines, subjects[-1].fsa_id, state)
        tick()
    await store(conn, baselines, COUNTER_STATE, make_state(SIZES[SLICE_CHECKED_AT]))
    tick()
    await conn.execute("VACUUM ANALYZE sms.entries")
    await conn.execute("VACUUM ANALYZE naive_states")
    return subjects


async def measure_round(
    samples: Samples, subjects: list[Subject], systems: list[System], count: int, tick: Callable[[], Any]
) -> None:
    """`count` calls of every operation, for every size and system in turn."""
    for subject in subjects:
        for system in systems:
            await samples.measure(subject, system, count)
            await system.settle()
            tick()


async def measure(database_url: str, plan: Plan, progress: Callable[[int, str], Any]) -> dict[str, Any]:
    """Everything the section reports, as plain data (results.json keeps it)."""
    async with contextlib.AsyncExitStack() as stack:
        conn = await asyncpg.connect(database_url)
        stack.push_async_callback(conn.close)
        await conn.execute(NaiveDocuments.SCHEMA)
        pool = await asyncpg.create_pool(database_url, min_size=1, max_size=NAIVE_POOL)
        stack.push_async_callback(pool.close)
        original, redis_version = await stack.enter_async_context(redis_documents())
        baselines = [original, NaiveDocuments(pool)]

        systems_count = 1 + len(baselines)
        # the states loaded, the cells of the warm-up and of each round, a lost-update test per system
        steps = len(SIZES) + 1 + (1 + plan.rounds) * len(SIZES) * systems_count + systems_count
        bar = stack.enter_context(progress(steps, "seed tables"))
        subjects = await load_states(conn, baselines, bar.update)
        port = await stack.enter_async_context(served(SERVER, database_url))
        connection = await HttpConnection.open(port)
        stack.callback(connection.close)
        systems = [Service(port, connection), *baselines]

        await measure_round(Samples(), subjects, systems, plan.warmup, bar.update)
        samples = Samples()
        for _ in range(plan.rounds):
            await measure_round(samples, subjects, systems, plan.iterations // plan.rounds, bar.update)
        lost = {}
        for system in systems:
            lost[system.name] = await lost_updates(system, COUNTER_STATE)
            bar.update()
        return {
            "postgres": await conn.fetchval("SELECT version()"),
            "redis": redis_version,
            "plan": asdict(plan),
            "states": {subject.label: subject.json_bytes for subject in subjects},
            "matched": {subject.label: subject.matched for subject in subjects},
            "latency": samples.summary(),
            "lost_updates": lost,
        }


# The tables, checks and charts


@dataclass(frozen=True)
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str


def ms(value: float) -> str:
    return f"{value:,.2f}"


def tables(data: dict[str, Any]) -> list[Table]:
    return [
        reads_table(data),
        agents_table(data),
        summaries_table(data),
        merges_table(data),
        lost_updates_table(data),
    ]


def _cell(data: dict[str, Any], size: str, system: str, name: str) -> dict[str, Any]:
    return data["latency"][size][system][name]


def _read_bytes(data: dict[str, Any], size: str, system: str, name: str) -> int:
    """Bytes a read received: the baselines read the whole document for a slice too."""
    return _cell(data, size, system, name if system == "ours" else "full")["bytes"]


def reads_table(data: dict[str, Any]) -> Table:
    focus = f"slice {FOCUS}"
    rows = [
        [
            size if index == 0 else "",
            SYSTEMS[system],
            f"{_cell(data, size, system, 'full')['bytes']:,}",
            ms(_cell(data, size, system, "full")["p50_ms"]),
            f"{_read_bytes(data, size, system, focus):,}",
            ms(_cell(data, size, system, focus)["p50_ms"]),
            f"{_cell(data, size, system, focus)['p50_ms'] / _cell(data, size, system, 'full')['p50_ms'] * 100:.0f} %",
            ms(_cell(data, size, system, FLOOR)["p50_ms"]) if system == "ours" else "-",
        ]
        for size in SIZES
        for index, system in enumerate(SYSTEMS)
    ]
    return Table(
        f"Full read vs slice `{AGENT_SLICES[FOCUS].spec}` k={K}",
        ["state", "system", "full B", "full p50 ms", "slice B read", "slice p50 ms", "slice / full", "floor p50 ms"],
        rows,
        "Ours: GET /state/{t}/{f} beside GET …/slice (the summary cached, as in a warm agent loop). The "
        "baselines have no slices: they read the whole document and filter it in Python, so a slice reads "
        "as many bytes as a full read and takes longer (it also decodes the document). Floor: GET /health, "
        "a request with one round trip to the database that reads nothing (and no key to check), timed in "
        "the same rounds: the least any read of ours costs on this machine.",
    )


def agents_table(data: dict[str, Any]) -> Table:
    rows = []
    for size in SIZES:
        names = [f"slice {phase}" for phase in PHASES]
        for phase in PHASES:
            rows.append(
                [
                    size if phase == PHASES[0] else "",
                    AGENT_SLICES[phase].spec,
                    f"{data['matched'][size][phase]:,}",
                    *_agent_cells(data, size, [f"slice {phase}"]),
                ]
            )
        rows.append(["", "all five", f"{sum(data['matched'][size].values()):,}", *_agent_cells(data, size, names)])
    return Table(
        f"Five agents, each reading its own slice (k={K})",
        ["state", "slice", "matched", "ours B", "ours p50 ms", "baseline B", "original p50 ms", "naive p50 ms"],
        rows,
        "One agent per phase of the workflow, each reading the first tasks of its phase. 'all five' adds up "
        "the bytes and the p50s. Baseline B: what the original design reads for each (the whole document).",
    )


def _agent_cells(data: dict[str, Any], size: str, names: list[str]) -> list[str]:
    def total(system: str, key: str) -> float:
        return sum(_cell(data, size, system, name)[key] for name in names)

    return [
        f"{sum(_read_bytes(data, size, 'ours', name) for name in names):,}",
        ms(total("ours", "p50_ms")),
        f"{sum(_read_bytes(data, size, 'original', name) for name in names):,}",
        ms(total("original", "p50_ms")),
        ms(total("naive", "p50_ms")),
    ]


def summaries_table(data: dict[str, Any]) -> Table:
    focus = f"slice {FOCUS}"
    rows = []
    for size in SIZES:
        hit, miss = _cell(data, size, "ours", focus)["p50_ms"], _cell(data, size, "ours", "summary")["p50_ms"]
        rows.append(
            [
                size,
                ms(hit),
                ms(miss),
                f"{miss / hit:.2f}×",
                ms(_cell(data, size, "original", "summary")["p50_ms"]),
                ms(_cell(data, size, "naive", "summary")["p50_ms"]),
            ]
        )
    return Table(
        f"Summaries of `{AGENT_SLICES[FOCUS].spec}` k={K}: cached vs made on every read",
        ["state", "ours cached p50 ms", "ours uncached p50 ms", "uncached / cached", "original p50 ms", "naive p50 ms"],
        rows,
        "Ours: the slice response's `summary`, from the summary cache (`cached: true`), or made afresh "
        "(`cached: false`) after an untimed delta on a task of the slice invalidated it. The baselines cache "
        f"nothing: each read fetches the document, filters it and summarises it (app.domain.summary, "
        f"{MAX_TOKENS} tokens).",
    )


def merges_table(data: dict[str, Any]) -> Table:
    rows = []
    for size in SIZES:
        cells = {system: _cell(data, size, system, "merge") for system in SYSTEMS}
        rows.append(
            [
                size,
                *(ms(cells[system][q]) for system in SYSTEMS for q in ("p50_ms", "p99_ms")),
                f"{cells['original']['p50_ms'] / cells['ours']['p50_ms']:,.1f}×",
                f"{cells['naive']['p50_ms'] / cells['ours']['p50_ms']:,.1f}×",
            ]
        )
    return Table(
        "Merge of a small delta ($set a task's status, $inc a metric)",
        [
            "state",
            "ours p50 ms",
            "ours p99 ms",
            "original p50 ms",
            "original p99 ms",
            "naive p50 ms",
            "naive p99 ms",
            "original / ours",
            "naive / ours",
        ],
        rows,
        "Ours: POST /state/{t}/{f}/delta (merged in PostgreSQL by sms.apply_delta). Original: Redis GET, "
        "json.loads, change, json.dumps, SET. Naive PG: SELECT doc, change in Python, UPDATE. Ratios of p50s.",
    )


def lost_updates_table(data: dict[str, Any]) -> Table:
    rows = [
        [
            SYSTEMS[system],
            f"{result['sent']:,}",
            f"{result['final']:,.0f}",
            f"{result['lost']:,.0f}",
            f"{result['elapsed_ms']:,.0f}",
        ]
        for system, result in data["lost_updates"].items()
    ]
    return Table(
        f"Lost updates: {INCREMENTS} concurrent $inc of one counter",
        ["system", "increments", "counter after", "lost", "elapsed ms"],
        rows,
        f"{INCREMENTS} tasks at once each add 1 to `{COUNTER}` of a ~100 KB state. Ours: {INCREMENTS} "
        "HTTP connections, one delta each. Original: GET, change, SET with no WATCH (as the original did). "
        f"Naive PG: SELECT, change, UPDATE on a pool of {NAIVE_POOL} connections, no row lock.",
    )


def checks(data: dict[str, Any]) -> list[Check]:
    """The section's acceptance: a slice costs a fraction of a full read, a merge a hundredth of the
    original's at 1 MB, and no increment is ever lost."""
    focus = _cell(data, SLICE_CHECKED_AT, "ours", f"slice {FOCUS}")["p50_ms"]
    full = _cell(data, SLICE_CHECKED_AT, "ours", "full")["p50_ms"]
    merge = data["latency"][MERGE_CHECKED_AT]
    speedup = merge["original"]["merge"]["p50_ms"] / merge["ours"]["merge"]["p50_ms"]
    lost = data["lost_updates"]["ours"]["lost"]
    return [
        Check(
            f"slice {AGENT_SLICES[FOCUS].spec} k={K} / full read of the {SLICE_CHECKED_AT} state, over HTTP (time)",
            focus / full,
            "≤ 20 %",
            focus / full <= 0.20,
            unit="%",
        ),
        Check(f"merge at {MERGE_CHECKED_AT}: original design / ours (p50)", speedup, "≥ 100×", speedup >= 100),
        Check(f"lost updates under {INCREMENTS} concurrent $inc, ours", lost, "= 0", lost == 0, unit=""),
    ]


def charts(data: dict[str, Any]) -> list[Chart]:
    sizes = [data["states"][size] / 1024 for size in SIZES]

    def by_size(axes: Any, lines: list[tuple[str, str, str, str, str]], ylabel: str) -> None:
        """Lines of latency by state size: (label, system, operation, p50_ms or p99_ms, line style)."""
        for label, system, name, key, style in lines:
            values = [_cell(data, size, system, name)[key] for size in SIZES]
            axes.plot(sizes, values, style, marker="o", label=label, color=COLORS[system])
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xticks(sizes, list(SIZES))
        axes.minorticks_off()
        axes.set_xlabel("state size (JSON)")
        axes.set_ylabel(ylabel)
        axes.grid(True, which="major", alpha=0.3)
        axes.legend(fontsize="small")

    def merges(axes: Any) -> None:
        lines = [(f"{SYSTEMS[s]}, {q}", s, "merge", f"{q}_ms", style) for s in SYSTEMS for q, style in QUANTILES]
        by_size(axes, lines, "ms (log)")

    def reads(axes: Any) -> None:
        kinds = (("full read", "full", "-"), ("slice", f"slice {FOCUS}", "--"))
        lines = [(f"{SYSTEMS[s]}, {what}", s, name, "p50_ms", style) for s in SYSTEMS for what, name, style in kinds]
        by_size(axes, lines, "p50 ms (log)")

    def lost(axes: Any) -> None:
        names = list(SYSTEMS)
        values = [data["lost_updates"][system]["lost"] for system in names]
        bars = axes.bar([SYSTEMS[s] for s in names], values, color=[COLORS[s] for s in names])
        axes.bar_label(bars, [f"{v:,.0f}" for v in values])
        axes.set_ylim(0, INCREMENTS * 1.1)  # room for the labels above the bars
        axes.set_ylabel(f"increments lost of {INCREMENTS}")

    return [
        Chart("seed_merge", "Merge latency of a small delta by state size", merges),
        Chart("seed_reads", f"Full read vs slice {AGENT_SLICES[FOCUS].spec} k={K} (p50)", reads),
        Chart("seed_lost_updates", f"Lost updates under {INCREMENTS} concurrent $inc", lost),
    ]


def introduction(data: dict[str, Any]) -> str:
    plan = data["plan"]
    return (
        "The seed's tables, each with three systems measured in one run: **ours**, this service over HTTP "
        "(uvicorn, one worker, in its own process; one keep-alive connection, one request at a time); "
        f"**original**, the original design: the whole state as one JSON string in Redis {data['redis']}, "
        "read-modify-written in Python (GET, `json.loads`, change, `json.dumps`, SET; no WATCH, as the "
        "original did); **naive PG**, one JSONB value per state in a table of its own, read-modify-written from "
        "Python (SELECT, change, UPDATE; no row lock). The baselines are called in-process with no HTTP in "
        "between, which flatters them. A read is timed until its bytes are in hand. "
        f"{plan['iterations']} timed calls per cell in {plan['rounds']} rounds that visit every size and system "
        "in turn (the naive table vacuumed, untimed, after each of its cells, so that the cleanup of its 1 MB "
        "rewrites does not land on the next system's); states from `bench.common.make_state` of "
        + ", ".join(f"{bytes_:,} B" for bytes_ in data["states"].values())
        + "."
    )


async def section(server_url: str, *, quick: bool, progress: Callable[[int, str], Any]) -> Section:
    """The seed's tables in a scratch database of that server, as a section of the report."""
    async with scratch_database(server_url) as url:
        data = await measure(url, QUICK if quick else FULL, progress)
    parts = [introduction(data)]
    for table in tables(data):
        parts += [f"### {table.title}", markdown_table(table.headers, table.rows, left_columns=2), table.note]
    return Section(
        title="The seed's tables: ours, the original design and naive PostgreSQL",
        markdown="\n\n".join(parts),
        checks=checks(data),
        charts=charts(data),
        data=data,
    )


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    data = run_measure(functools.partial(measure, progress=progress_bar), plan)
    machine = {**machine_info(data["postgres"]), "Redis": data["redis"]}
    print("\n".join(f"{key:<11} {value}" for key, value in machine.items()))
    for table in tables(data):
        print(f"\n{table.title.replace('`', '')}\n{format_table(table.headers, table.rows)}\n{table.note}")
    print()
    return finish(checks(data), machine, data, args.json)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.seed", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
