"""Security benchmark: what policies cost the merge, and what an API key costs a request.

DESIGN §10 puts policies in the merge and a key check in front of every request; neither may make
the common case slower:

- merge: sms.apply_delta latency in the database (one connection, one delta at a time) of the
  merge benchmark's tiny delta mix on a 100 KB state with 0, 10 and 1,000 rules on other paths —
  other collections, and other members of the collections the deltas touch. For scale, unchecked:
  the same with rules on the very paths the deltas touch, which every delta then checks.
  Acceptance: p50 with 1,000 rules / with none ≤ 1.2.
- auth: HTTP latency of a slice read (task:DESIGN_* k=5) and of a delta with an API key, against
  the same without one (protected mode, on loopback): two identical databases served side by side
  in this process. Acceptance: p50 with a key / without ≤ 1.1, for each.

Every variant is measured in rounds that visit each in turn, so that a noisy minute on a shared
machine hits all alike. It runs in scratch databases that it creates (and drops at the end) on the
server of SMS_DATABASE_URL, or on an embedded PostgreSQL in a temporary directory. Quote the ratios,
not the times.

    python -m bench security [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import asyncpg
import httpx

from app.db.queries import Database
from app.domain.keys import NewKey
from bench.common import (
    STATUSES,
    add_arguments,
    format_table,
    http_service,
    machine_info,
    make_state,
    percentile,
    postgres_server,
    scratch_database,
)
from bench.merge import DeltaMix

TENANT = "bench"
STATE_BYTES = 100 * 1024
MERGE_LIMIT = 1.2  # p50 with 1,000 unrelated rules / with none
AUTH_LIMIT = 1.1  # p50 with a key / without
SLICE = "/state/bench/auth/slice?slice=task:DESIGN_*&k=5"


@dataclass(frozen=True)
class Plan:
    deltas: int  # per merge variant, over all rounds
    requests: int  # per auth variant and request kind, over all rounds
    rounds: int
    warmup: int


FULL = Plan(deltas=3000, requests=3000, rounds=10, warmup=100)
QUICK = Plan(deltas=300, requests=300, rounds=3, warmup=20)


def unrelated_rules(count: int) -> list[dict[str, Any]]:
    """`count` rules on paths the delta mix never touches: half on other collections, half on
    other members of the collections it does touch (tasks, metrics, agents_online)."""
    rules = []
    for n in range(count):
        rules.append(
            [
                {"path": f"ledger_{n}.balance", "min": 0},
                {"path": f"quota_{n}", "max": 100, "name": f"quota {n}"},
                {"path": f"tasks.ARCHIVED_{n}.status", "enum": list(STATUSES)},
                {"path": f"metrics.budget_{n}", "min": 0, "max_change": 10},
                {"path": f"agents_online.retired-{n}.last_seen", "type": "string"},
            ][n % 5]
        )
    return rules


# Rules on the paths the delta mix does touch: every delta is then checked.
TOUCHED_RULES = [
    {"path": "tasks.*.status", "enum": list(STATUSES)},
    {"path": "tasks.*.tags", "type": "array"},
    {"path": "metrics.ctr", "min": 0},
    {"path": "metrics.latency_ms_p99", "max": 1_000_000},
    {"path": "events", "type": "array"},
    {"path": "agents_online.*.last_seen", "type": "string"},
]

MERGE_VARIANTS = {
    "no rules": [],
    "10 rules on other paths": unrelated_rules(10),
    "1,000 rules on other paths": unrelated_rules(1000),
    f"{len(TOUCHED_RULES)} rules on the touched paths": TOUCHED_RULES,
}


async def timed(action: Callable[[], Awaitable[Any]], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await action()
        samples.append((time.perf_counter() - start) * 1000)
    return samples


async def measure_merge(url: str, plan: Plan) -> dict[str, list[float]]:
    """Latencies (ms) of tiny deltas on one state per variant, each with that variant's rules."""
    conn = await asyncpg.connect(url)
    try:
        state = make_state(STATE_BYTES)
        mixes = {}
        for n, (variant, rules) in enumerate(MERGE_VARIANTS.items()):
            fsa_id = f"merge-{n}"
            await conn.fetchval("SELECT sms.replace_state($1, $2, $3::jsonb)", TENANT, fsa_id, json.dumps(state))
            await conn.fetchval("SELECT sms.set_policy($1, $2, $3::jsonb)", TENANT, fsa_id, json.dumps(rules))
            mixes[variant] = (fsa_id, DeltaMix(state, seed=n))
        await conn.execute("VACUUM ANALYZE")

        async def apply(fsa_id: str, mix: DeltaMix) -> None:
            delta = mix.take(1)[0].wire
            result = await conn.fetchval("SELECT sms.apply_delta($1, $2, $3::jsonb)", TENANT, fsa_id, delta)
            if not json.loads(result)["success"]:
                raise RuntimeError(f"a benchmark delta was refused: {result}")

        samples: dict[str, list[float]] = defaultdict(list)
        for warm in (True, *([False] * plan.rounds)):
            for variant, (fsa_id, mix) in mixes.items():
                count = plan.warmup if warm else plan.deltas // plan.rounds
                taken = await timed(lambda fsa_id=fsa_id, mix=mix: apply(fsa_id, mix), count)
                if not warm:
                    samples[variant] += taken
        return samples
    finally:
        await conn.close()


async def measure_auth(plain_url: str, keyed_url: str, plan: Plan) -> dict[str, list[float]]:
    """Latencies (ms) of slice reads and deltas over HTTP: without a key on a database that has
    none (protected mode), and with a key on an identical one that has it."""
    state = make_state(STATE_BYTES)
    for url in (plain_url, keyed_url):
        conn = await asyncpg.connect(url)
        try:
            await conn.fetchval("SELECT sms.replace_state($1, 'auth', $2::jsonb)", TENANT, json.dumps(state))
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()
    key = NewKey.make([TENANT], "write", rate_limit=1_000_000, label="bench security")
    owner = await Database.connect(keyed_url, min_size=1, max_size=1)
    try:
        await owner.create_key(key)
    finally:
        await owner.close()

    async with contextlib.AsyncExitStack() as stack:
        clients = {
            "without a key": await stack.enter_async_context(http_service(plain_url, 1)),
            "with a key": await stack.enter_async_context(
                http_service(keyed_url, 1, headers={"authorization": f"Bearer {key.key}"})
            ),
        }
        mixes = {name: DeltaMix(state, seed=7) for name in clients}

        async def read(client: httpx.AsyncClient) -> None:
            response = await client.get(SLICE)
            response.raise_for_status()

        async def write(client: httpx.AsyncClient, mix: DeltaMix) -> None:
            response = await client.post(
                "/state/bench/auth/delta", content=mix.take(1)[0].wire, headers={"content-type": "application/json"}
            )
            response.raise_for_status()

        samples: dict[str, list[float]] = defaultdict(list)
        for warm in (True, *([False] * plan.rounds)):
            count = plan.warmup if warm else plan.requests // plan.rounds
            for name, client in clients.items():
                reads = await timed(lambda client=client: read(client), count)
                writes = await timed(lambda client=client, name=name: write(client, mixes[name]), count)
                if not warm:
                    samples[f"slice read {name}"] += reads
                    samples[f"delta {name}"] += writes
        return samples


async def measure(plan: Plan) -> tuple[dict[str, str], dict[str, list[float]], dict[str, list[float]]]:
    with postgres_server() as server_url:
        async with scratch_database(server_url) as merge_url:
            conn = await asyncpg.connect(merge_url)
            machine = machine_info(await conn.fetchval("SELECT version()"))
            await conn.close()
            print("\n".join(f"{key:<11} {value}" for key, value in machine.items()), flush=True)
            merge = await measure_merge(merge_url, plan)
        async with scratch_database(server_url) as plain_url, scratch_database(server_url) as keyed_url:
            auth = await measure_auth(plain_url, keyed_url, plan)
    return machine, merge, auth


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL
    machine, merge, auth = asyncio.run(measure(plan))
    base = percentile(merge["no rules"], 50)
    merge_rows = [
        [variant, f"{percentile(s, 50):.3f}", f"{percentile(s, 95):.3f}", f"{percentile(s, 50) / base:.2f}×"]
        for variant, s in merge.items()
    ]
    merge_ratio = percentile(merge["1,000 rules on other paths"], 50) / base
    auth_rows, auth_ratios = [], {}
    for kind in ("slice read", "delta"):
        plain = percentile(auth[f"{kind} without a key"], 50)
        for name in ("without a key", "with a key"):
            s = auth[f"{kind} {name}"]
            p50, p95 = percentile(s, 50), percentile(s, 95)
            auth_rows.append([f"{kind} {name}", f"{p50:.3f}", f"{p95:.3f}", f"{p50 / plain:.2f}×"])
        auth_ratios[kind] = percentile(auth[f"{kind} with a key"], 50) / plain
    headers = ["", "p50 ms", "p95 ms", "p50 / first"]
    print(f"\nmerge: sms.apply_delta in the database, {len(merge['no rules'])} tiny deltas per variant, 100 KB states")
    print(format_table(["rules on the state", *headers[1:]], merge_rows))
    print(f"\nauth: over HTTP (uvicorn on 127.0.0.1, one client), {len(auth['delta with a key'])} requests per row")
    print(format_table(["request", *headers[1:]], auth_rows))
    merge_passed = merge_ratio <= MERGE_LIMIT
    auth_passed = all(ratio <= AUTH_LIMIT for ratio in auth_ratios.values())
    print(
        f"\nacceptance: merge p50 with 1,000 unrelated rules / none = {merge_ratio:.2f}× (at most {MERGE_LIMIT}×): "
        f"{'PASS' if merge_passed else 'FAIL'}; HTTP p50 with a key / without = "
        + ", ".join(f"{kind} {ratio:.2f}×" for kind, ratio in auth_ratios.items())
        + f" (at most {AUTH_LIMIT}×): {'PASS' if auth_passed else 'FAIL'}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "security",
                    "machine": machine,
                    "plan": asdict(plan),
                    "merge_p50_ms": {variant: percentile(s, 50) for variant, s in merge.items()},
                    "auth_p50_ms": {name: percentile(s, 50) for name, s in auth.items()},
                    "acceptance": {
                        "merge_ratio": merge_ratio,
                        "auth_ratios": auth_ratios,
                        "passed": merge_passed and auth_passed,
                    },
                },
                indent=2,
            )
        )
    return 0 if merge_passed and auth_passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.security", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
