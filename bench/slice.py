"""Slice benchmark: what a slice costs beside the full state, on states of 25 KB, 100 KB and 1 MB.

DESIGN §5 promises that a slice costs what it matches, not the state's size, and §6 that a repeated
slice is one indexed lookup in the summary cache. For the seed's slice specs this measures bytes and
latency of a slice beside a full read, in the database (asyncpg: sms.read_slice_parts, uncached,
beside sms.document) and through HTTP (GET …/slice beside GET /state/{t}/{f}, a real uvicorn
server), and cached beside uncached slices (sms.read_slice hits beside sms.read_slice_parts; over
HTTP, repeated identical reads beside reads that each miss because each asks for its own max_tokens,
so a miss also pays for the summary and for storing it).
Acceptance, for every seed spec: the 1 MB / 25 KB ratio of the uncached in-database p50 is at most
1.5, and at 100 KB the slice's HTTP response is at most 5 % of the full read's. Beside them, for
comparison and not checked: the three most recently changed tasks (`order=recent`, walked from
the entry history), and a glob that is no key family (`task:DES*`), which is counted over the
entries it covers, so its cost grows with them.

It runs in a scratch database that it creates (and drops at the end) on the server of
SMS_DATABASE_URL, or on an embedded PostgreSQL in a temporary directory; its states belong to tenant
"bench". Quote the ratios, not the times: the machines are shared and noisy.

    python -m bench slice [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import httpx

from app.domain import jsontext
from app.domain.summary import slice_body
from bench.common import add_arguments, format_table, http_service, machine_info, make_state, percentile, run_measure

TENANT = "bench"
SIZES = {"25 KB": 25 * 1024, "100 KB": 100 * 1024, "1 MB": 1024 * 1024}
SMALL, CHECKED, LARGE = SIZES  # the latency ratio is LARGE / SMALL; the bytes check is at CHECKED
LATENCY_LIMIT = 1.5  # the largest accepted 1 MB / 25 KB ratio of the uncached in-database p50
BYTES_LIMIT = 5.0  # the largest accepted slice response at 100 KB, in % of the full read's
HIT_TOKENS = 300  # max_tokens of the cached HTTP reads (the service's default); each miss asks for another
MAX_TOKENS = 8000  # the largest max_tokens the service accepts
DB_OPTIONS = "bench"  # sms.read_slice's options for the in-database cached reads: a cache key of their own

SLICE_PARTS = "SELECT sms.read_slice_parts($1, $2, sms.parse_slice($3), $4, $5, NULL)"
READ_SLICE = "SELECT sms.read_slice($1, $2, $3, $4, $5, NULL, $6)"
STORE_SLICE = "SELECT sms.store_slice_summary($1, $2, $3::jsonb, $4)"
DOCUMENT = "SELECT sms.document($1, $2)"


@dataclass(frozen=True)
class Read:
    """A slice spec with its k and order, or the full state (no spec)."""

    spec: str | None
    k: int | None = None
    order: str = "key"

    @property
    def name(self) -> str:
        if self.spec is None:
            return "full state"
        return self.spec + (f" k={self.k}" if self.k else "") + (f" {self.order}" if self.order != "key" else "")

    @property
    def paths(self) -> tuple[str, ...]:
        """Uncached in the database and over HTTP; a slice also through the cache ("_hit")."""
        return ("db", "http") if self.spec is None else ("db", "db_hit", "http", "http_hit")


FULL_READ = Read(None)
SLICES = (
    Read("task:DESIGN_*", 5),
    Read("metric:*", 10),
    Read("resources.inventory"),
    Read("task:*", 3),
    Read("resources.cash_balance_usd"),
)
# shown for comparison, not checked: the most recently changed tasks (walked from the history), and
# a glob that is no key family (counted over its candidates)
UNCHECKED = (Read("task:*", 3, "recent"), Read("task:DES*", 5))
READS = (*SLICES, *UNCHECKED, FULL_READ)


@dataclass(frozen=True)
class Plan:
    """How much to measure. Reads are measured in rounds that visit every size, read and path in
    turn, so that a noisy minute on a shared machine hits them all alike."""

    iterations: int  # timed reads per size, read and path
    rounds: int
    warmup: int  # untimed reads per size, read and path before measuring


FULL = Plan(iterations=300, rounds=10, warmup=20)
QUICK = Plan(iterations=30, rounds=3, warmup=5)

Call = Callable[[], Awaitable[str | bytes]]


async def timed(call: Call, count: int) -> tuple[list[float], list[str | bytes]]:
    """Makes `count` calls one after the other; the latency of each, in ms, and the results."""
    samples, results = [], []
    for _ in range(count):
        start = time.perf_counter()
        results.append(await call())
        samples.append((time.perf_counter() - start) * 1000)
    return samples, results


async def http_get(http: httpx.AsyncClient, url: str, params: dict[str, Any]) -> bytes:
    response = await http.get(url, params=params)
    if response.status_code != 200:
        raise RuntimeError(f"GET {url} {params}: HTTP {response.status_code}: {response.text[:300]}")
    return response.content


def check_cached(results: list[str | bytes], cached: bool) -> None:
    """Every read was a cache hit (cached) or a miss (not cached), as intended."""
    for result in results:
        if json.loads(result)["cached"] is not cached:
            raise RuntimeError(f"expected a cache {'hit' if cached else 'miss'}, got {str(result)[:300]}")


@dataclass
class Subject:
    """One state of about a target size, and what was measured on it by (read, path): latencies,
    response bytes, and how many entries each slice matched."""

    label: str
    fsa_id: str
    json_bytes: int
    # max_tokens of the HTTP misses; a value comes round again only long after the cache evicted it
    miss_tokens: Iterator[int] = field(default_factory=lambda: itertools.cycle(range(HIT_TOKENS + 1, MAX_TOKENS + 1)))
    samples: defaultdict[tuple[str, str], list[float]] = field(default_factory=lambda: defaultdict(list))  # ms
    response_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)

    async def measure(self, conn: asyncpg.Connection, http: httpx.AsyncClient, read: Read, count: int) -> None:
        """`count` reads of `read` on each of its paths."""
        for path in read.paths:
            samples, results = await timed(await self._prepare(conn, http, read, path), count)
            self.samples[read.name, path] += samples
            last = results[-1]
            self.response_bytes[read.name, path] = len(last if isinstance(last, bytes) else last.encode())
            if path == "db" and read.spec is not None:
                self.matched[read.name] = json.loads(last)["total"]
            elif path.endswith("_hit"):
                check_cached(results, True)
            elif path == "http" and read.spec is not None:
                check_cached(results, False)

    async def _prepare(self, conn: asyncpg.Connection, http: httpx.AsyncClient, read: Read, path: str) -> Call:
        """The call that reads `read` on `path`; for a cached path, after making sure the cache
        holds it (the HTTP misses may have evicted it since the last round)."""
        url = f"/state/{TENANT}/{self.fsa_id}"
        if read.spec is None:
            if path == "db":
                return lambda: conn.fetchval(DOCUMENT, TENANT, self.fsa_id)
            return lambda: http_get(http, url, {})
        params: dict[str, Any] = {"slice": read.spec, "order": read.order, **({"k": read.k} if read.k else {})}
        if path == "db":
            return lambda: conn.fetchval(SLICE_PARTS, TENANT, self.fsa_id, read.spec, read.k, read.order)
        if path == "db_hit":
            args = (TENANT, self.fsa_id, read.spec, read.k, read.order, DB_OPTIONS)
            first = await conn.fetchval(READ_SLICE, *args)
            if not json.loads(first)["cached"]:
                await conn.execute(
                    STORE_SLICE, TENANT, self.fsa_id, first, slice_body(jsontext.decode(first), "", HIT_TOKENS)
                )
            return lambda: conn.fetchval(READ_SLICE, *args)
        if path == "http_hit":
            await http_get(http, f"{url}/slice", {**params, "max_tokens": HIT_TOKENS})
            return lambda: http_get(http, f"{url}/slice", {**params, "max_tokens": HIT_TOKENS})
        return lambda: http_get(http, f"{url}/slice", {**params, "max_tokens": next(self.miss_tokens)})

    def forget(self) -> None:
        """Drops the latencies measured so far (the warm-up)."""
        self.samples.clear()

    def summary(self) -> dict[str, Any]:
        return {
            "size": self.label,
            "json_bytes": self.json_bytes,
            "samples": len(self.samples[FULL_READ.name, "db"]),
            "reads": {
                read.name: {
                    "matched": self.matched.get(read.name),
                    **{f"{path}_bytes": self.response_bytes[read.name, path] for path in read.paths},
                    **{
                        f"{path}_p{q}_ms": percentile(self.samples[read.name, path], q)
                        for path in read.paths
                        for q in (50, 95)
                    },
                }
                for read in READS
            },
        }


async def load(conn: asyncpg.Connection, label: str, target_bytes: int) -> Subject:
    """A state of about `target_bytes`, written with sms.replace_state."""
    state = make_state(target_bytes)
    fsa_id = f"slice-{label.replace(' ', '').lower()}"
    await conn.fetchval("SELECT sms.replace_state($1, $2, $3::jsonb)", TENANT, fsa_id, json.dumps(state))
    await conn.execute("VACUUM ANALYZE sms.entries")
    return Subject(label, fsa_id, len(json.dumps(state, separators=(",", ":")).encode()))


async def measure(database_url: str, plan: Plan) -> tuple[dict[str, str], list[dict[str, Any]]]:
    async with contextlib.AsyncExitStack() as stack:
        conn = await asyncpg.connect(database_url)
        stack.push_async_callback(conn.close)
        machine = machine_info(await conn.fetchval("SELECT version()"))
        print("\n".join(f"{key:<11} {value}" for key, value in machine.items()), flush=True)

        subjects = [await load(conn, label, size) for label, size in SIZES.items()]
        http = await stack.enter_async_context(http_service(database_url))
        for subject in subjects:
            for read in READS:
                await subject.measure(conn, http, read, plan.warmup)
            subject.forget()
        for _ in range(plan.rounds):
            for subject in subjects:
                for read in READS:
                    await subject.measure(conn, http, read, plan.iterations // plan.rounds)
        return machine, [subject.summary() for subject in subjects]


def ratios(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per read: the latency ratios of the largest to the smallest state, bytes in % of the full
    read's at CHECKED, and cached / uncached latency (p50s) at the largest state."""
    by_size = {row["size"]: row["reads"] for row in results}
    small, checked, large = by_size[SMALL], by_size[CHECKED], by_size[LARGE]
    out = {}
    for read in READS:
        name = read.name
        row = {
            f"{path}_p50_large_over_small": large[name][f"{path}_p50_ms"] / small[name][f"{path}_p50_ms"]
            for path in read.paths
        }
        for path in ("db", "http"):
            row[f"{path}_bytes_pct_of_full"] = (
                100 * checked[name][f"{path}_bytes"] / checked[FULL_READ.name][f"{path}_bytes"]
            )
        if read.spec is not None:
            for path in ("db", "http"):
                row[f"{path}_hit_over_miss"] = large[name][f"{path}_hit_p50_ms"] / large[name][f"{path}_p50_ms"]
        out[name] = row
    return out


def checks(ratio: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """The acceptance checks of every slice: latency growth and bytes."""
    return {
        read.name: {
            "latency_ratio": ratio[read.name]["db_p50_large_over_small"],
            "latency_passed": ratio[read.name]["db_p50_large_over_small"] <= LATENCY_LIMIT,
            "bytes_pct": ratio[read.name]["http_bytes_pct_of_full"],
            "bytes_passed": ratio[read.name]["http_bytes_pct_of_full"] <= BYTES_LIMIT,
        }
        for read in SLICES
    }


def report(results: list[dict[str, Any]], ratio: dict[str, dict[str, float]], verdicts: dict[str, Any]) -> str:
    """The measurements (a row per read and size), then the ratios (a row per read)."""

    def ms(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.2f}" if key in row else ""

    rows = [
        [
            read.name if index == 0 else "",
            result["size"],
            "" if result["reads"][read.name]["matched"] is None else f"{result['reads'][read.name]['matched']:,}",
            f"{result['reads'][read.name]['db_bytes']:,}",
            f"{result['reads'][read.name]['http_bytes']:,}",
            *(
                ms(result["reads"][read.name], f"{path}_ms")
                for path in ("db_p50", "db_p95", "db_hit_p50", "http_p50", "http_p95", "http_hit_p50")
            ),
        ]
        for read in READS
        for index, result in enumerate(results)
    ]
    table = format_table(
        [
            "read",
            "state",
            "matched",
            "db B",
            "http B",
            "db p50",
            "db p95",
            "db hit p50",
            "http p50",
            "http p95",
            "http hit p50",
        ],
        rows,
    )

    def times(value: float | None) -> str:
        return "" if value is None else f"{value:.2f}×"

    ratio_rows = []
    for read in READS:
        row, verdict = ratio[read.name], verdicts.get(read.name)
        ratio_rows.append(
            [
                read.name,
                times(row["db_p50_large_over_small"]),
                times(row["http_p50_large_over_small"]),
                times(row.get("db_hit_p50_large_over_small")),
                times(row.get("http_hit_p50_large_over_small")),
                f"{row['db_bytes_pct_of_full']:.2f} %",
                f"{row['http_bytes_pct_of_full']:.2f} %",
                times(row.get("db_hit_over_miss")),
                times(row.get("http_hit_over_miss")),
                "" if verdict is None else "PASS" if verdict["latency_passed"] else "FAIL",
                "" if verdict is None else "PASS" if verdict["bytes_passed"] else "FAIL",
            ]
        )
    ratio_table = format_table(
        [
            "read",
            f"db {LARGE}/{SMALL}",
            f"http {LARGE}/{SMALL}",
            f"db hit {LARGE}/{SMALL}",
            f"http hit {LARGE}/{SMALL}",
            f"db B % full {CHECKED}",
            f"http B % full {CHECKED}",
            f"db hit/miss {LARGE}",
            f"http hit/miss {LARGE}",
            f"latency ≤{LATENCY_LIMIT}×",
            f"bytes ≤{BYTES_LIMIT:g} %",
        ],
        ratio_rows,
    )
    return table + "\n\n" + ratio_table


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    machine, results = run_measure(measure, plan)
    ratio = ratios(results)
    verdicts = checks(ratio)
    passed = all(v["latency_passed"] and v["bytes_passed"] for v in verdicts.values())
    print(f"\nslice against full read; {results[0]['samples']} sequential reads per size, read and path (p50/p95 ms)")
    print(report(results, ratio, verdicts))
    print(
        "\ndb: sms.read_slice_parts (uncached) or sms.document over asyncpg; db hit: sms.read_slice answered from the\n"
        f"summary cache. http: GET /state/{TENANT}/{{fsa}}/slice (each read a cache miss: its own max_tokens) or\n"
        f"GET /state/{TENANT}/{{fsa}}; http hit: the same slice GET repeated (max_tokens={HIT_TOKENS}). B: response\n"
        "bytes (db: the function's JSON text). matched: entries the spec matched, before k."
    )
    print(
        f"\nacceptance: uncached in-database p50 {LARGE} / {SMALL} ≤ {LATENCY_LIMIT}× and slice HTTP bytes at "
        f"{CHECKED} ≤ {BYTES_LIMIT:g} % of the full read's, for every spec: {'PASS' if passed else 'FAIL'}"
    )
    for name, verdict in verdicts.items():
        failed = [
            *([f"latency {verdict['latency_ratio']:.2f}×"] if not verdict["latency_passed"] else []),
            *([f"bytes {verdict['bytes_pct']:.2f} %"] if not verdict["bytes_passed"] else []),
        ]
        if failed:
            print(f"  FAIL {name}: {', '.join(failed)}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "slice",
                    "machine": machine,
                    "plan": asdict(plan),
                    "results": results,
                    "ratios": ratio,
                    "acceptance": {
                        "latency_limit": LATENCY_LIMIT,
                        "bytes_limit_pct": BYTES_LIMIT,
                        "checks": verdicts,
                        "passed": passed,
                    },
                },
                indent=2,
            )
        )
    return 0 if passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.slice", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
