"""Merge benchmark: what a tiny delta costs on states of 10 KB, 100 KB and 1 MB.

DESIGN §3 and §4.3 promise that a merge costs what it changes, not the state's size. This measures
`sms.apply_delta` for a realistic mix of tiny deltas, in the database (asyncpg, sequential and with
8 concurrent connections) and through HTTP (a real uvicorn server in this event loop, httpx clients),
beside the layout the design rejected: the whole state as one jsonb value, updated with jsonb_set.
Acceptance: the 1 MB / 10 KB ratio of the in-database p50 is at most 1.5.

It runs in a scratch database that it creates (and drops at the end) on the server of
SMS_DATABASE_URL, or on an embedded PostgreSQL in a temporary directory; its states belong to tenant
"bench". Quote the ratios, not the times: the machines are shared and noisy. WAL is the server's
whole WAL over the measured deltas, so other traffic on SMS_DATABASE_URL's server inflates it.

    python -m bench merge [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from typing import Any

import asyncpg
import httpx

from bench.common import (
    EVENTS_KEPT,
    STATUSES,
    TAGS,
    add_arguments,
    event,
    format_table,
    http_service,
    machine_info,
    make_state,
    percentile,
    run_measure,
)

TENANT = "bench"
SIZES = {"10 KB": 10 * 1024, "100 KB": 100 * 1024, "1 MB": 1024 * 1024}
WORKERS = 8  # concurrent connections / HTTP clients in the throughput runs
LIMIT = 1.5  # the largest accepted 1 MB / 10 KB ratio of the in-database p50

APPLY = "SELECT sms.apply_delta($1, $2, $3::jsonb)"
BASELINE_SCHEMA = """
CREATE SCHEMA bench_baseline;
CREATE TABLE bench_baseline.states (
    fsa_id  text   PRIMARY KEY,
    doc     jsonb  NOT NULL,
    version bigint NOT NULL DEFAULT 0
);
"""
BASELINE_UPDATE = "UPDATE bench_baseline.states SET doc = {doc}, version = version + 1 WHERE fsa_id = $1"


@dataclass(frozen=True)
class Plan:
    """How much to measure. Everything is measured in rounds that visit every size in turn, so that
    a noisy minute on a shared machine hits all sizes alike."""

    iterations: int  # sequential deltas per size, for each of: in the database, single jsonb, HTTP
    rounds: int
    warmup: int  # deltas per size and path before measuring
    per_worker: int  # deltas per concurrent worker in each round's throughput runs


FULL = Plan(iterations=1000, rounds=10, warmup=50, per_worker=30)
QUICK = Plan(iterations=60, rounds=3, warmup=10, per_worker=5)


@dataclass(frozen=True)
class Delta:
    """One tiny delta, in the wire format and as the same change to the single-jsonb layout."""

    wire: str  # the delta map as JSON text
    baseline_doc: str  # SQL for the new `doc`; $1 is the fsa id, then baseline_args
    baseline_args: tuple[Any, ...]


class DeltaMix:
    """A deterministic stream of the small deltas agents send, cycling through four kinds."""

    def __init__(self, state: dict[str, Any], seed: int) -> None:
        self._rng = random.Random(seed)
        self._tasks = sorted(state["tasks"])
        self._agents = sorted(state["agents_online"])
        self._kinds = itertools.cycle((self._task_status, self._event, self._latency_peak, self._tag))

    def take(self, count: int) -> list[Delta]:
        return [next(self._kinds)() for _ in range(count)]

    def _task_status(self) -> Delta:
        task, status = self._rng.choice(self._tasks), self._rng.choice(STATUSES)
        return Delta(
            json.dumps({f"tasks.{task}.status": status, "metrics.ctr": {"$inc": 0.2}}),
            "jsonb_set(jsonb_set(doc, $2, to_jsonb($3::text)), '{metrics,ctr}',"
            " to_jsonb((doc #>> '{metrics,ctr}')::numeric + $4))",
            (["tasks", task, "status"], status, Decimal("0.2")),
        )

    def _event(self) -> Delta:
        entry = event(self._rng, self._rng.choice(self._agents), "task_done")
        return Delta(
            json.dumps({"events": {"$push": {"$each": [entry], "$slice": -EVENTS_KEPT}}}),
            "jsonb_set(doc, '{events}', (SELECT jsonb_agg(e ORDER BY i)"
            " FROM jsonb_array_elements((doc -> 'events') || $2::jsonb) WITH ORDINALITY t(e, i)"
            " WHERE i > jsonb_array_length(doc -> 'events') + 1 - $3))",
            (json.dumps([entry]), EVENTS_KEPT),
        )

    def _latency_peak(self) -> Delta:
        peak, agent = self._rng.randint(800, 1500), self._rng.choice(self._agents)
        seen = f"2025-02-{self._rng.randint(1, 28):02d}T12:00:00Z"
        return Delta(
            json.dumps({"metrics.latency_ms_p99": {"$max": peak}, f"agents_online.{agent}.last_seen": seen}),
            "jsonb_set(jsonb_set(doc, '{metrics,latency_ms_p99}',"
            " to_jsonb(greatest((doc #>> '{metrics,latency_ms_p99}')::numeric, $2))), $3, to_jsonb($4::text))",
            (Decimal(peak), ["agents_online", agent, "last_seen"], seen),
        )

    def _tag(self) -> Delta:
        task, tag = self._rng.choice(self._tasks), self._rng.choice(TAGS)
        return Delta(
            json.dumps({f"tasks.{task}.tags": {"$add": [tag]}}),
            "CASE WHEN doc #> $2 @> $3 THEN doc ELSE jsonb_set(doc, $2, coalesce(doc #> $2, '[]') || $3) END",
            (["tasks", task, "tags"], json.dumps([tag])),
        )


Apply = Callable[[Delta], Awaitable[Any]]


async def apply_in_db(conn: asyncpg.Connection, fsa_id: str, delta: Delta) -> None:
    await conn.fetchval(APPLY, TENANT, fsa_id, delta.wire)


async def apply_to_baseline(conn: asyncpg.Connection, fsa_id: str, delta: Delta) -> None:
    await conn.execute(BASELINE_UPDATE.format(doc=delta.baseline_doc), fsa_id, *delta.baseline_args)


async def apply_over_http(client: httpx.AsyncClient, fsa_id: str, delta: Delta) -> None:
    response = await client.post(
        f"/state/{TENANT}/{fsa_id}/delta", content=delta.wire, headers={"content-type": "application/json"}
    )
    if response.status_code != 200:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text}")


async def timed(apply: Apply, deltas: list[Delta]) -> list[float]:
    """Applies the deltas one after the other; the latency of each, in ms."""
    samples = []
    for delta in deltas:
        start = time.perf_counter()
        await apply(delta)
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def throughput(streams: list[tuple[Apply, list[Delta]]]) -> float:
    """Deltas per second with every stream running concurrently."""
    start = time.perf_counter()
    await asyncio.gather(*(timed(apply, deltas) for apply, deltas in streams))
    return sum(len(deltas) for _, deltas in streams) / (time.perf_counter() - start)


async def wal_position(conn: asyncpg.Connection) -> int:
    high, low = (await conn.fetchval("SELECT pg_current_wal_insert_lsn()::text")).split("/")
    return (int(high, 16) << 32) + int(low, 16)


@dataclass
class Subject:
    """One state size: WORKERS states of about that size (the first one also in the baseline
    table), their delta streams, and what was measured on each path ("db", "baseline", "http")."""

    label: str
    json_bytes: int
    fsa_ids: list[str]
    mixes: list[DeltaMix]
    samples: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # ms
    wal: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))  # bytes
    rates: defaultdict[str, list[float]] = field(default_factory=lambda: defaultdict(list))  # deltas/s per round

    async def sequential(self, conn: asyncpg.Connection, http: httpx.AsyncClient, count: int) -> None:
        """`count` deltas in the database, the same deltas on the single jsonb value, `count` over HTTP."""
        fsa_id, deltas = self.fsa_ids[0], self.mixes[0].take(count)
        for path, apply in (
            ("db", functools.partial(apply_in_db, conn, fsa_id)),
            ("baseline", functools.partial(apply_to_baseline, conn, fsa_id)),
        ):
            before = await wal_position(conn)
            self.samples[path] += await timed(apply, deltas)
            self.wal[path] += await wal_position(conn) - before
        self.samples["http"] += await timed(functools.partial(apply_over_http, http, fsa_id), self.mixes[0].take(count))

    async def concurrent(self, workers: list[asyncpg.Connection], http: httpx.AsyncClient, per_worker: int) -> None:
        """Deltas per second with WORKERS connections on as many states and on one state, and with
        WORKERS HTTP clients on as many states."""
        one, own = self.fsa_ids[0], list(zip(workers, self.fsa_ids, self.mixes, strict=True))
        for name, streams in (
            ("db_ops_s", [(functools.partial(apply_in_db, conn, fsa), mix) for conn, fsa, mix in own]),
            ("db_one_state_ops_s", [(functools.partial(apply_in_db, conn, one), self.mixes[0]) for conn in workers]),
            ("http_ops_s", [(functools.partial(apply_over_http, http, fsa), mix) for _, fsa, mix in own]),
        ):
            self.rates[name].append(await throughput([(apply, mix.take(per_worker)) for apply, mix in streams]))

    def forget(self) -> None:
        """Drops what was measured so far (the warm-up)."""
        self.samples.clear()
        self.wal.clear()
        self.rates.clear()

    def summary(self) -> dict[str, Any]:
        count = len(self.samples["db"])
        return {
            "size": self.label,
            "json_bytes": self.json_bytes,
            "samples": count,
            **{
                f"{path}_p{q}_ms": percentile(self.samples[path], q)
                for path in ("db", "baseline", "http")
                for q in (50, 95)
            },
            **{f"{path}_wal_bytes_per_delta": self.wal[path] / count for path in ("db", "baseline")},
            **{name: statistics.median(rates) for name, rates in self.rates.items()},
        }


async def load(conn: asyncpg.Connection, label: str, target_bytes: int) -> Subject:
    """WORKERS states of about `target_bytes`, written with sms.replace_state."""
    states = [make_state(target_bytes, seed) for seed in range(WORKERS)]
    fsa_ids = [f"merge-{label.replace(' ', '').lower()}-{n}" for n in range(WORKERS)]
    for fsa_id, state in zip(fsa_ids, states, strict=True):
        await conn.fetchval("SELECT sms.replace_state($1, $2, $3::jsonb)", TENANT, fsa_id, json.dumps(state))
    await conn.execute(
        "INSERT INTO bench_baseline.states (fsa_id, doc) VALUES ($1, $2::jsonb)", fsa_ids[0], json.dumps(states[0])
    )
    await conn.execute("VACUUM ANALYZE sms.entries")
    await conn.execute("VACUUM ANALYZE bench_baseline.states")
    mixes = [DeltaMix(state, seed=1000 + n) for n, state in enumerate(states)]
    size = len(json.dumps(states[0]).encode())
    return Subject(label, size, fsa_ids, mixes)


async def measure(database_url: str, plan: Plan) -> tuple[dict[str, str], list[dict[str, Any]]]:
    async with contextlib.AsyncExitStack() as stack:
        connections = [await asyncpg.connect(database_url) for _ in range(WORKERS + 1)]
        for conn in connections:
            stack.push_async_callback(conn.close)
        conn, workers = connections[0], connections[1:]
        machine = machine_info(await conn.fetchval("SELECT version()"))
        print("\n".join(f"{key:<11} {value}" for key, value in machine.items()), flush=True)

        await conn.execute(BASELINE_SCHEMA)
        subjects = [await load(conn, label, size) for label, size in SIZES.items()]
        http = await stack.enter_async_context(http_service(database_url, WORKERS))

        for subject in subjects:
            await subject.sequential(conn, http, plan.warmup)
            await subject.concurrent(workers, http, max(2, plan.warmup // WORKERS))
            subject.forget()
        for _ in range(plan.rounds):
            for subject in subjects:
                await subject.sequential(conn, http, plan.iterations // plan.rounds)
                await subject.concurrent(workers, http, plan.per_worker)
        results = [subject.summary() for subject in subjects]
        return machine, results


# (header, result key, format, whether the ratio rows show it)
COLUMNS = [
    ("JSON bytes", "json_bytes", "{:,.0f}", True),
    ("db p50 ms", "db_p50_ms", "{:.2f}", True),
    ("db p95 ms", "db_p95_ms", "{:.2f}", True),
    ("1-jsonb p50 ms", "baseline_p50_ms", "{:.2f}", True),
    ("http p50 ms", "http_p50_ms", "{:.2f}", True),
    ("http p95 ms", "http_p95_ms", "{:.2f}", True),
    (f"db/s {WORKERS} fsa", "db_ops_s", "{:,.0f}", False),
    ("db/s 1 fsa", "db_one_state_ops_s", "{:,.0f}", False),
    (f"http/s {WORKERS} fsa", "http_ops_s", "{:,.0f}", False),
    ("WAL B/delta", "db_wal_bytes_per_delta", "{:,.0f}", True),
    ("1-jsonb WAL B/delta", "baseline_wal_bytes_per_delta", "{:,.0f}", True),
]


def report(results: list[dict[str, Any]]) -> tuple[str, dict[str, dict[str, float]]]:
    """The table (a row per size, then the ratios to the smallest size) and the ratios."""
    first, *others = results
    ratios = {
        f"{row['size']} / {first['size']}": {key: row[key] / first[key] for _, key, _, shown in COLUMNS if shown}
        for row in reversed(others)
    }
    rows = [[row["size"], *(fmt.format(row[key]) for _, key, fmt, _ in COLUMNS)] for row in results]
    rows += [
        [name, *(f"{ratio[key]:.2f}×" if shown else "" for _, key, _, shown in COLUMNS)]
        for name, ratio in ratios.items()
    ]
    return format_table(["state", *(header for header, *_ in COLUMNS)], rows), ratios


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    machine, results = run_measure(measure, plan)
    table, ratios = report(results)
    ratio = ratios[f"{results[-1]['size']} / {results[0]['size']}"]["db_p50_ms"]
    passed = ratio <= LIMIT
    print(f"\nmerge latency of tiny deltas; {results[0]['samples']} sequential deltas per size and path")
    print(table)
    print(
        "db: sms.apply_delta called over asyncpg; 1-jsonb: the same deltas on the whole state kept as one jsonb\n"
        "value (jsonb_set, the rejected layout); http: POST /state/bench/{fsa}/delta to uvicorn on 127.0.0.1.\n"
        f"ops/s: {WORKERS} concurrent connections or clients, each on its own state or all on one (median of rounds).\n"
        "WAL B/delta: WAL written per sequential delta. Ratios are to the smallest state."
    )
    print(
        f"\nacceptance: in-database p50, {results[-1]['size']} / {results[0]['size']} = {ratio:.2f}× "
        f"(at most {LIMIT}×): {'PASS' if passed else 'FAIL'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "merge",
                    "machine": machine,
                    "plan": asdict(plan),
                    "results": results,
                    "ratios": ratios,
                    "acceptance": {"ratio": ratio, "limit": LIMIT, "passed": passed},
                },
                indent=2,
            )
        )
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.merge", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
