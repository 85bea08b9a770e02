"""History benchmark: what reading an old version costs beside a current read, on a 100 KB state.

sms.document_at promises that a read of any old version costs the state's size plus at most
sms.snapshot_every() versions of changes, however far back it is: the latest snapshot up to the
version, overlaid with sms.entry_history. This builds a ~100 KB state (bench/common.py), applies
12,549 realistic tiny deltas to it (task status changes, metric $inc, inventory $push with $slice,
agents_online $max heartbeats), once with snapshots every 1,000 versions (the default) and once
every 100, and measures reads 1, 100, 1,000 and 10,000 versions back, the worst case (the version
just below a snapshot: snapshot_every - 1 versions to overlay) and the best (a snapshot) beside a
current read: in the database (asyncpg: sms.document_at beside sms.document) and through HTTP
(GET /state/{t}/{f}?version=v beside GET /state/{t}/{f}, a real uvicorn server). It also reports
what history and snapshots cost on disk. Acceptance: with the default interval, the in-database
p50 of the read 10,000 versions back is at most 5 times the current read's.

It runs in a scratch database that it creates (and drops at the end) on the server of
SMS_DATABASE_URL, or on an embedded PostgreSQL in a temporary directory; its states belong to tenant
"bench". Quote the ratios, not the times: the machines are shared and noisy.

    python -m bench history [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from bench.common import (
    ITEMS,
    REGIONS,
    STATUSES,
    add_arguments,
    format_table,
    http_service,
    machine_info,
    make_state,
    percentile,
    run_measure,
)

TENANT = "bench"
STATE_BYTES = 100 * 1024
DELTAS = 12_549  # after the initial write (version 1): the state ends at version 12,550
INTERVALS = (1000, 100)  # sms.snapshot_every of the two states; the first is the default
DEFAULT_INTERVAL = INTERVALS[0]
CHECKED = "10,000 back"  # the read of the acceptance check, at the default interval
LIMIT = 5.0  # the largest accepted ratio of its in-database p50 to the current read's
BATCH = 500  # deltas per executemany: one round trip and one transaction

REPLACE = "SELECT sms.replace_state($1, $2, $3::jsonb)"
APPLY = "SELECT sms.apply_delta($1, $2, $3::jsonb)"
DOCUMENT = "SELECT sms.document($1, $2)"
DOCUMENT_AT = "SELECT sms.document_at($1, $2, $3)"
SNAPSHOT_UP_TO = (
    "SELECT coalesce(max(version), 0) FROM sms.snapshots WHERE tenant_id = $1 AND fsa_id = $2 AND version <= $3"
)
HISTORY_ROWS = (
    "SELECT count(*) FROM sms.entry_history WHERE tenant_id = $1 AND fsa_id = $2 AND version > $3 AND version <= $4"
)
TABLES = ("sms.entry_history", "sms.snapshot_entries", "sms.snapshots")
SIZES = "SELECT " + ", ".join(f"pg_total_relation_size('{table}')" for table in TABLES)
COUNTS = """
SELECT (SELECT count(*) FROM sms.entry_history WHERE tenant_id = $1 AND fsa_id = $2),
       (SELECT count(*) FROM sms.snapshots WHERE tenant_id = $1 AND fsa_id = $2),
       (SELECT count(*) FROM sms.snapshot_entries WHERE tenant_id = $1 AND fsa_id = $2),
       (SELECT entry_count FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2)
"""


@dataclass(frozen=True)
class Plan:
    """How much to measure. Reads are measured in rounds that visit every interval, read and path
    in turn, so that a noisy minute on a shared machine hits them all alike."""

    iterations: int  # timed reads per interval, read and path
    rounds: int
    warmup: int  # untimed reads per interval, read and path (past plpgsql's 5 custom plans per connection)


FULL = Plan(iterations=400, rounds=10, warmup=30)
QUICK = Plan(iterations=20, rounds=2, warmup=10)


class DeltaMix:
    """A deterministic stream of the tiny deltas agents send (as JSON text): task status changes
    (a task done also counts in metrics), metric $inc, inventory $push with $slice (a bounded
    list), agents_online heartbeats ($max of a clock that moves forward)."""

    def __init__(self, state: dict[str, Any], seed: int) -> None:
        self._rng = random.Random(seed)
        self._tasks = sorted(state["tasks"])
        self._agents = sorted(state["agents_online"])
        self._inventory = len(state["resources"]["inventory"])
        self._clock = datetime(2025, 2, 6, 9, 0, tzinfo=UTC)
        self._kinds = (self._task_status, self._metric, self._inventory_push, self._heartbeat)

    def take(self, count: int) -> list[str]:
        kinds = self._rng.choices(self._kinds, weights=(3, 3, 1, 3), k=count)
        return [json.dumps(kind()) for kind in kinds]

    def _task_status(self) -> dict[str, Any]:
        task, status = self._rng.choice(self._tasks), self._rng.choice(STATUSES)
        return {f"tasks.{task}.status": status, **({"metrics.tasks_done": {"$inc": 1}} if status == "DONE" else {})}

    def _metric(self) -> dict[str, Any]:
        name, step = self._rng.choice((("throughput_rps", self._rng.randint(-20, 20)), ("ctr", 0.1)))
        return {f"metrics.{name}": {"$inc": step}}

    def _inventory_push(self) -> dict[str, Any]:
        item = {
            "sku": f"SKU-{self._rng.randrange(100_000):05d}",
            "item": self._rng.choice(ITEMS),
            "qty": self._rng.randint(0, 500),
            "region": self._rng.choice(REGIONS),
        }
        return {"resources.inventory": {"$push": {"$each": [item], "$slice": -self._inventory}}}

    def _heartbeat(self) -> dict[str, Any]:
        self._clock += timedelta(seconds=self._rng.randint(1, 30))
        seen = self._clock.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {f"agents_online.{self._rng.choice(self._agents)}.last_seen": {"$max": seen}}


@dataclass(frozen=True)
class Read:
    """A read of the state: at `version`, or the current state (version None)."""

    name: str
    version: int | None
    overlaid_versions: int = 0  # versions of history overlaid on the snapshot
    overlaid_rows: int = 0  # rows of sms.entry_history overlaid


def reads_at(current: int, every: int) -> list[tuple[str, int | None]]:
    """The reads measured on a state at version `current` with snapshots every `every` versions."""
    worst = current - 1 - current % every  # the latest version before `current` that is every - 1 past a snapshot
    return [
        ("current", None),
        ("1 back", current - 1),
        ("100 back", current - 100),
        ("1,000 back", current - 1000),
        (CHECKED, current - 10_000),
        ("worst: snapshot + (every-1)", worst),
        ("best: at a snapshot", current - current % every),
    ]


Call = Callable[[], Awaitable[Any]]


async def timed(call: Call, count: int) -> list[float]:
    """Makes `count` calls one after the other; the latency of each, in ms."""
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def http_get(http: httpx.AsyncClient, url: str, params: dict[str, Any]) -> bytes:
    response = await http.get(url, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} {params}: HTTP {response.status_code}: {response.text[:300]}")
    return response.content


@dataclass
class Subject:
    """The state built with one snapshot interval, its reads, what its build cost and what was
    measured on it by (read, path)."""

    every: int
    fsa_id: str
    version: int
    build_seconds: float
    storage: dict[str, Any]
    reads: list[Read] = field(default_factory=list)
    samples: defaultdict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))  # ms

    def call(self, conn: asyncpg.Connection, http: httpx.AsyncClient, read: Read, path: str) -> Call:
        url = f"/state/{TENANT}/{self.fsa_id}"
        if path == "db":
            if read.version is None:
                return lambda: conn.fetchval(DOCUMENT, TENANT, self.fsa_id)
            return lambda: conn.fetchval(DOCUMENT_AT, TENANT, self.fsa_id, read.version)
        return lambda: http_get(http, url, {} if read.version is None else {"version": read.version})

    async def measure(self, conn: asyncpg.Connection, http: httpx.AsyncClient, count: int) -> None:
        for read in self.reads:
            for path in ("db", "http"):
                self.samples[read.name, path] += await timed(self.call(conn, http, read, path), count)

    def summary(self) -> dict[str, Any]:
        p50 = {
            (read.name, path): percentile(self.samples[read.name, path], 50)
            for read in self.reads
            for path in ("db", "http")
        }
        return {
            "snapshot_every": self.every,
            "version": self.version,
            "samples": len(self.samples["current", "db"]),
            "build_deltas_per_s": DELTAS / self.build_seconds,
            "storage": self.storage,
            "reads": {
                read.name: {
                    "version": read.version,
                    "versions_back": 0 if read.version is None else self.version - read.version,
                    "overlaid_versions": read.overlaid_versions,
                    "overlaid_history_rows": read.overlaid_rows,
                    **{
                        f"{path}_p{q}_ms": percentile(self.samples[read.name, path], q)
                        for path in ("db", "http")
                        for q in (50, 95)
                    },
                    **{
                        f"{path}_p50_over_current": p50[read.name, path] / p50["current", path]
                        for path in ("db", "http")
                    },
                }
                for read in self.reads
            },
        }


async def build(database_url: str, every: int, state: str, deltas: list[str]) -> Subject:
    """The state written with sms.replace_state and then the deltas, BATCH per round trip, on a
    connection whose sms.snapshot_every is `every` (NOTIFY off: nobody listens); what it added to
    the history tables."""
    fsa_id = f"history-every-{every}"
    conn = await asyncpg.connect(database_url, server_settings={"sms.snapshot_every": str(every), "sms.notify": "off"})
    try:
        before = await conn.fetchrow(SIZES)
        start = time.perf_counter()
        await conn.fetchval(REPLACE, TENANT, fsa_id, state)
        for first in range(0, len(deltas), BATCH):
            await conn.executemany(APPLY, [(TENANT, fsa_id, delta) for delta in deltas[first : first + BATCH]])
        seconds = time.perf_counter() - start
        after = await conn.fetchrow(SIZES)
        history_rows, snapshots, snapshot_rows, entries = await conn.fetchrow(COUNTS, TENANT, fsa_id)
        version = await conn.fetchval(
            "SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", TENANT, fsa_id
        )
    finally:
        await conn.close()
    grown = dict(zip(TABLES, (a - b for a, b in zip(after, before, strict=True)), strict=True))
    snapshot_bytes = grown["sms.snapshot_entries"] + grown["sms.snapshots"]
    storage = {
        "entries": entries,
        "history_rows": history_rows,
        "history_bytes": grown["sms.entry_history"],
        "history_bytes_per_row": grown["sms.entry_history"] / history_rows,
        "snapshots": snapshots,
        "snapshot_rows": snapshot_rows,
        "snapshot_bytes": snapshot_bytes,
        "snapshot_bytes_per_snapshot": snapshot_bytes / max(snapshots, 1),
    }
    return Subject(every, fsa_id, version, seconds, storage)


async def plan_reads(conn: asyncpg.Connection, subject: Subject) -> None:
    """The subject's reads, with how much history each overlays."""
    for name, version in reads_at(subject.version, subject.every):
        if version is None:
            subject.reads.append(Read(name, None))
            continue
        snapshot = await conn.fetchval(SNAPSHOT_UP_TO, TENANT, subject.fsa_id, version)
        rows = await conn.fetchval(HISTORY_ROWS, TENANT, subject.fsa_id, snapshot, version)
        subject.reads.append(Read(name, version, version - snapshot, rows))


async def check_answers(conn: asyncpg.Connection, http: httpx.AsyncClient, subjects: list[Subject]) -> None:
    """Every interval gives the same state at each version, over asyncpg and HTTP, and
    sms.document_at of the current version is sms.document."""
    first, *others = subjects
    for read in first.reads:
        version = first.version if read.version is None else read.version
        db = json.loads(await conn.fetchval(DOCUMENT_AT, TENANT, first.fsa_id, version))
        for subject in others:
            if json.loads(await conn.fetchval(DOCUMENT_AT, TENANT, subject.fsa_id, version)) != db:
                raise RuntimeError(f"version {version}: every {subject.every} and every {first.every} differ")
        body = json.loads(await http_get(http, f"/state/{TENANT}/{first.fsa_id}", {"version": version}))
        if body["state"] != db:
            raise RuntimeError(f"version {version}: HTTP and sms.document_at differ")
    if json.loads(await conn.fetchval(DOCUMENT, TENANT, first.fsa_id)) != json.loads(
        await conn.fetchval(DOCUMENT_AT, TENANT, first.fsa_id, first.version)
    ):
        raise RuntimeError("sms.document_at of the current version is not sms.document")


async def measure(database_url: str, plan: Plan) -> tuple[dict[str, str], dict[str, Any]]:
    async with contextlib.AsyncExitStack() as stack:
        conn = await asyncpg.connect(database_url)
        stack.push_async_callback(conn.close)
        machine = machine_info(await conn.fetchval("SELECT version()"))
        print("\n".join(f"{key:<11} {value}" for key, value in machine.items()), flush=True)

        state = make_state(STATE_BYTES)
        state_text = json.dumps(state)
        deltas = DeltaMix(state, seed=1).take(DELTAS)
        # one after the other, so that each one's growth of the shared history tables is its own
        subjects = [await build(database_url, every, state_text, deltas) for every in INTERVALS]
        await conn.execute("VACUUM ANALYZE sms.entries, sms.entry_history, sms.snapshots, sms.snapshot_entries")
        for subject in subjects:
            await plan_reads(conn, subject)

        http = await stack.enter_async_context(http_service(database_url))
        await check_answers(conn, http, subjects)
        for subject in subjects:
            await subject.measure(conn, http, plan.warmup)
            subject.samples.clear()
        for _ in range(plan.rounds):
            for subject in subjects:
                await subject.measure(conn, http, plan.iterations // plan.rounds)
        return machine, {
            "json_bytes": len(json.dumps(state, separators=(",", ":")).encode()),
            "deltas": DELTAS,
            "intervals": [subject.summary() for subject in subjects],
        }


def report(results: dict[str, Any]) -> str:
    """A row per interval and read: where the version is, what it overlays, its latencies and
    their ratio to the current read's; then what history and snapshots cost on disk."""
    rows = []
    for interval in results["intervals"]:
        for index, (name, read) in enumerate(interval["reads"].items()):
            rows.append(
                [
                    f"every {interval['snapshot_every']:,}" if index == 0 else "",
                    name,
                    f"{interval['version'] if read['version'] is None else read['version']:,}",
                    f"{read['versions_back']:,}",
                    f"{read['overlaid_versions']:,}",
                    f"{read['overlaid_history_rows']:,}",
                    f"{read['db_p50_ms']:.2f}",
                    f"{read['db_p95_ms']:.2f}",
                    f"{read['db_p50_over_current']:.2f}×",
                    f"{read['http_p50_ms']:.2f}",
                    f"{read['http_p95_ms']:.2f}",
                    f"{read['http_p50_over_current']:.2f}×",
                ]
            )
    latency = format_table(
        [
            "interval",
            "read",
            "version",
            "back",
            "overlaid versions",
            "history rows",
            "db p50",
            "db p95",
            "db /current",
            "http p50",
            "http p95",
            "http /current",
        ],
        rows,
    )
    storage = format_table(
        [
            "interval",
            "build deltas/s",
            "history rows",
            "history MB",
            "B/history row",
            "snapshots",
            "entries/snapshot",
            "snapshot MB",
            "KB/snapshot",
        ],
        [
            [
                f"every {interval['snapshot_every']:,}",
                f"{interval['build_deltas_per_s']:,.0f}",
                f"{s['history_rows']:,}",
                f"{s['history_bytes'] / 2**20:.1f}",
                f"{s['history_bytes_per_row']:,.0f}",
                f"{s['snapshots']:,}",
                f"{s['snapshot_rows'] / max(s['snapshots'], 1):,.0f}",
                f"{s['snapshot_bytes'] / 2**20:.1f}",
                f"{s['snapshot_bytes_per_snapshot'] / 1024:,.0f}",
            ]
            for interval in results["intervals"]
            for s in [interval["storage"]]
        ],
    )
    return latency + "\n\n" + storage


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    machine, results = run_measure(measure, plan)
    default = next(i for i in results["intervals"] if i["snapshot_every"] == DEFAULT_INTERVAL)
    checked = default["reads"][CHECKED]
    ratio, http_ratio = checked["db_p50_over_current"], checked["http_p50_over_current"]
    passed = ratio <= LIMIT
    print(
        f"\ntime travel on a {results['json_bytes']:,}-byte state after {results['deltas']:,} tiny deltas; "
        f"{default['samples']} sequential reads per interval, read and path (ms)"
    )
    print(report(results))
    print(
        "\ndb: sms.document_at(t, f, version) or, for current, sms.document(t, f) over asyncpg; http: GET\n"
        f"/state/{TENANT}/{{fsa}}?version=v or GET /state/{TENANT}/{{fsa}} to uvicorn on 127.0.0.1. overlaid: the\n"
        "versions (and sms.entry_history rows) laid over the latest snapshot up to the version. /current: p50 over\n"
        "the current read's. Storage: what the build added to sms.entry_history and to sms.snapshot_entries +\n"
        "sms.snapshots (pg_total_relation_size, indexes and TOAST included); history rows include the initial write."
    )
    print(
        f"\nacceptance: in-database p50, {CHECKED} / current, every {DEFAULT_INTERVAL:,} = {ratio:.2f}× "
        f"(at most {LIMIT:g}×): {'PASS' if passed else 'FAIL'}  (HTTP: {http_ratio:.2f}×)"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "history",
                    "machine": machine,
                    "plan": asdict(plan),
                    "results": results,
                    "acceptance": {"ratio": ratio, "http_ratio": http_ratio, "limit": LIMIT, "passed": passed},
                },
                indent=2,
            )
        )
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.history", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
