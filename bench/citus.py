"""Citus benchmark: deltas delegated to the tenant's node or run from the coordinator; tenants spread.

latency — one writer, one small delta at a time, each its own transaction, to one state: a
counter (`{"n": {"$inc": 1}}`); the counter and a member of a collection (`"tasks.T1": {…}`, which
also keeps the collection's member counts and marker); the counter and a whole collection replaced
(`"tasks": {"T1": …}`: its old members removed, the new ones inserted and counted afresh):
  * delegated: `SELECT sms.apply_delta(…)`, a bare call of a function distributed by its tenant
    argument, which Citus sends whole to the tenant's worker (one round trip there);
  * coordinator: `SELECT sms.apply_delta(…)::text` — the cast keeps Citus from delegating, so the
    function runs on the coordinator and each of its statements goes to the worker on its own;
  * service: what the service sends on Citus (app/db/queries.py), as its role sms_api: in one
    transaction block, sms.act_for and then the delegated call. (The same call run on the
    coordinator cannot be measured as sms_api: Citus moves the rows of an INSERT … SELECT that it
    does not push down with COPY, which row-level security refuses. Delegated, the statement runs
    on the tenant's node, where its rows are local.)
notify — a subscriber of each tenant (app.feed.Feed, the poll out of reach: only a notification
wakes it) while a writer applies deltas to a tenant on each worker, delegated (the NOTIFY comes
from that worker) and from the coordinator (from the coordinator): how long from the write's
return until the subscriber has it, each delivered once.
spread — TENANTS tenants, one state each, WRITERS writers each on its own tenant for SECONDS:
which node each tenant's shards are on, and the deltas per second delegated and from the
coordinator. Every state's version is checked against the deltas applied (exact).

It needs an empty database on a Citus coordinator whose workers are added (CREATE EXTENSION citus
on every node, citus_add_node): SMS_DATABASE_URL. It migrates and distributes it (`sms migrate
--citus`), then writes tenants named bench-*. Everything shares this machine's cores; quote ratios.

    SMS_DATABASE_URL=postgresql://…:9700/bench python -m bench citus [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.db import citus, migrate
from app.db.queries import Database, session_settings
from app.db.roles import api_database_url
from app.domain.delta import WriteMeta
from app.feed import Feed
from bench.common import add_arguments as common_arguments
from bench.common import format_table, machine_info, percentile
from bench.report import Check, finish

TENANTS = 32
WRITERS = 16
COUNTER = json.dumps({"n": {"$inc": 1}})  # one entry
MEMBER = json.dumps({"n": {"$inc": 1}, "tasks.T1": {"status": "OPEN", "owner": "bench"}})  # and a member
COLLECTION = json.dumps({"n": {"$inc": 1}, "tasks": {"T1": {"status": "OPEN", "owner": "bench"}}})  # a whole one
KINDS = {"": COUNTER, ", with a member": MEMBER, ", replacing a collection": COLLECTION}
DELTA = COUNTER


@dataclass(frozen=True)
class Plan:
    calls: int  # sequential calls per latency case
    seconds: float  # each spread run
    warmup: int


FULL = Plan(calls=2000, seconds=10.0, warmup=200)
QUICK = Plan(calls=200, seconds=2.0, warmup=20)

DELEGATED = "SELECT sms.apply_delta($1, $2, $3::jsonb)"
ON_COORDINATOR = "SELECT sms.apply_delta($1, $2, $3::jsonb)::text"


async def timed_calls(
    conn: asyncpg.Connection, query: str, tenant: str, fsa: str, plan: Plan, delta: str = DELTA
) -> list[float]:
    """Milliseconds of each of `plan.calls` calls, after the warm-up."""
    times = []
    for n in range(plan.warmup + plan.calls):
        start = time.perf_counter()
        await conn.fetchval(query, tenant, fsa, delta)
        if n >= plan.warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


async def service_calls(db: Database, tenant: str, fsa: str, plan: Plan) -> list[float]:
    """The same through the service's Database (as sms_api, acting for the tenant)."""
    acting = db.acting_for([tenant])
    times = []
    for n in range(plan.warmup + plan.calls):
        start = time.perf_counter()
        await acting.apply_delta(tenant, fsa, DELTA, WriteMeta())
        if n >= plan.warmup:
            times.append((time.perf_counter() - start) * 1000)
    return times


async def spread(url: str, query: str, label: str, plan: Plan) -> float:
    """Deltas per second of WRITERS writers, each on its own tenant."""
    conns = [await asyncpg.connect(url) for _ in range(WRITERS)]
    done = [0] * WRITERS
    until = time.perf_counter() + plan.seconds

    async def writer(n: int) -> None:
        while time.perf_counter() < until:
            await conns[n].fetchval(query, f"bench-{n}", f"spread-{label}", DELTA)
            done[n] += 1

    try:
        start = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
        elapsed = time.perf_counter() - start
    finally:
        await asyncio.gather(*(conn.close() for conn in conns))
    return sum(done) / elapsed


async def notify(url: str, tenants: dict[str, str], plan: Plan) -> dict[str, list[float]]:
    """Milliseconds from a write's return to its delivery, by where the write ran."""
    delays: dict[str, list[float]] = {}
    writer = await asyncpg.connect(url)
    try:
        async with Feed.connect(url, poll_interval=3600) as feed:
            await asyncio.wait_for(feed.listener.connected.wait(), 30)
            for tenant, node in tenants.items():
                for label, query in (("delegated", DELEGATED), ("coordinator", ON_COORDINATOR)):
                    changes = feed.subscribe(tenant, f"notify-{label}")
                    pending = asyncio.ensure_future(anext(changes))
                    await asyncio.sleep(0.2)  # the subscription has read the (empty) log and waits
                    times = delays.setdefault(f"{label}, tenant on {node}", [])
                    for _ in range(max(5, plan.calls // 40)):
                        await writer.fetchval(query, tenant, f"notify-{label}", DELTA)
                        start = time.perf_counter()
                        await asyncio.wait_for(pending, 30)
                        times.append((time.perf_counter() - start) * 1000)
                        pending = asyncio.ensure_future(anext(changes))
                    pending.cancel()
                    await changes.aclose()
    finally:
        await writer.close()
    return delays


async def measure(url: str, plan: Plan) -> dict[str, Any]:
    await asyncio.to_thread(migrate.upgrade, url)
    owner = await asyncpg.connect(url)
    try:
        if not await citus.is_citus(owner):
            raise SystemExit("python -m bench citus: SMS_DATABASE_URL must name a database on a Citus coordinator")
        await citus.distribute(owner, "sms_api", session_settings(True, 1000, 32, 512))
        citus_version = await owner.fetchval("SELECT citus_version()")
        nodes = await owner.fetch(
            "SELECT nodename || ':' || nodeport AS node FROM pg_dist_node WHERE groupid <> 0 ORDER BY nodeid"
        )
        where = await owner.fetch(
            "SELECT t.tenant, n.nodename || ':' || n.nodeport AS node FROM unnest($1::text[]) t(tenant)"
            " JOIN pg_dist_placement p ON p.shardid = get_shard_id_for_distribution_column('sms.states', t.tenant)"
            " JOIN pg_dist_node n ON n.groupid = p.groupid",
            [f"bench-{n}" for n in range(TENANTS)],
        )
        latency = {}
        for n, (kind, delta) in enumerate(KINDS.items()):
            for where_run, query in (("delegated", DELEGATED), ("coordinator", ON_COORDINATOR)):
                latency[where_run + kind] = await timed_calls(
                    owner, query, "bench-0", f"latency-{n}-{where_run}", plan, delta
                )
        db = await Database.connect(api_database_url(url), min_size=1, max_size=2)
        try:
            latency["service (sms_api), delegated"] = await service_calls(db, "bench-1", "service", plan)
        finally:
            await db.close()
        by_node: dict[str, str] = {}
        for row in where:
            by_node.setdefault(row["node"], row["tenant"])
        delivered = await notify(url, {tenant: node for node, tenant in by_node.items()}, plan)
        rates = {
            "delegated": await spread(url, DELEGATED, "delegated", plan),
            "coordinator": await spread(url, ON_COORDINATOR, "coordinator", plan),
        }
        # one statement per table or function call: Citus runs none inside another's execution
        states = await owner.fetch("SELECT tenant_id, fsa_id, version FROM sms.states WHERE tenant_id LIKE 'bench-%'")
        logged = {
            (row[0], row[1]): row[2]
            for row in await owner.fetch(
                "SELECT tenant_id, fsa_id, count(*) FROM sms.deltas WHERE tenant_id LIKE 'bench-%' GROUP BY 1, 2"
            )
        }
        exact = True
        for tenant, fsa, version in states:
            n = json.loads(await owner.fetchval("SELECT sms.document($1, $2)::text", tenant, fsa))["n"]
            exact &= version == logged[tenant, fsa] == n
    finally:
        await owner.close()
    return {
        "citus": citus_version,
        "workers": [row["node"] for row in nodes],
        "tenants_per_node": _count(row["node"] for row in where),
        "latency_ms": {name: {"p50": percentile(t, 50), "p99": percentile(t, 99)} for name, t in latency.items()},
        "spread_deltas_s": rates,
        "notify_ms": {name: {"p50": percentile(t, 50), "max": max(t)} for name, t in delivered.items()},
        "exact": exact,
        "states": len(states),
    }


def _count(nodes: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node] = counts.get(node, 0) + 1
    return dict(sorted(counts.items()))


def _coordinator(name: str) -> str:
    """The coordinator-executed case a row compares with."""
    return "coordinator" + next((kind for kind in KINDS if kind and name.endswith(kind)), "")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    url = os.environ.get("SMS_DATABASE_URL")
    if not url:
        raise SystemExit("python -m bench citus: set SMS_DATABASE_URL to an empty database on a Citus coordinator")
    plan = QUICK if args.quick else FULL
    results = asyncio.run(measure(url, plan))
    latency = results["latency_ms"]
    print(
        f"{results['citus'].split(' on ')[0]}; workers {', '.join(results['workers'])};"
        f" database {urlsplit(url).path.lstrip('/')}"
    )
    print(f"{TENANTS} tenants per node: " + ", ".join(f"{k} {v}" for k, v in results["tenants_per_node"].items()))
    print()
    print(
        format_table(
            ["one delta at a time", "p50 ms", "p99 ms", "p50 vs coordinator"],
            [
                [name, f"{v['p50']:.2f}", f"{v['p99']:.2f}", f"{latency[_coordinator(name)]['p50'] / v['p50']:.2f}x"]
                for name, v in latency.items()
            ],
        )
    )
    print()
    rates = results["spread_deltas_s"]
    print(
        format_table(
            [f"{WRITERS} writers, own tenants", "deltas/s", "vs coordinator"],
            [[name, f"{rate:,.0f}", f"{rate / rates['coordinator']:.2f}x"] for name, rate in rates.items()],
        )
    )
    print()
    print(
        format_table(
            ["NOTIFY to delivery (Feed, no poll)", "p50 ms", "max ms"],
            [[name, f"{v['p50']:.1f}", f"{v['max']:.1f}"] for name, v in results["notify_ms"].items()],
        )
    )
    print()
    machine = machine_info(results["citus"])
    for key, value in machine.items():
        print(f"{key}: {value}")
    speedup = latency["coordinator"]["p50"] / latency["delegated"]["p50"]
    checks = [
        Check("states whose version, log and counter agree", results["states"], "all", results["exact"], unit=""),
        Check("delta p50, coordinator / delegated", speedup, "> 1×", speedup > 1),
        Check(
            "slowest delivery after a write, any node",
            slowest := max(v["max"] for v in results["notify_ms"].values()),
            "< 1000 ms",
            slowest < 1000,
            unit=" ms",
        ),
    ]
    return finish(checks, machine, results, args.json)
