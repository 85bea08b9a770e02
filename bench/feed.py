"""Change-feed benchmark: commit-to-subscriber latency, and what NOTIFY costs the writers.

DESIGN §7: every applied delta NOTIFYs sms_changes; subscribers are woken by it and read the log.
This measures, for four subscribers at once — `app.feed.Feed` on the database and the SSE endpoints
over HTTP, each tenant-wide and per state — the time from a writer's commit to the subscriber's
receipt, with writers paced at 500 deltas/s and at saturation (WRITERS writers as fast as they go,
each on its own state), and the writers' throughput with NOTIFY on and off (sms.notify, set by
`Database.connect(notify=False)`). Without NOTIFY the subscribers only learn of changes by polling
(every 5 s), so that row shows the fallback; the writers' throughput is also measured with no
subscriber reading. A last row paces this tenant at 20 deltas/s while another tenant's writers
saturate the server: the tenant feed reads only below the oldest transaction running on the server,
but is woken only by its own tenant's notifications.

Processes: the writers (one process, an asyncpg pool via app.db.queries.Database), the service
(uvicorn, another process) and the subscribers (this process). A commit is timed by the server's
clock_timestamp() just before it commits; a receipt by the wall clock when the subscriber yields it
(Feed) or reads its `id:` line (SSE): one clock, as long as the server runs on this machine. It runs
in a scratch database on the server of SMS_DATABASE_URL, or on an embedded PostgreSQL in a temporary
directory. Quote the ratios: the machines are shared.

    python -m bench feed [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import socket
import statistics
import sys
import time
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import httpx

from app.db.queries import Database
from app.domain.delta import WriteMeta
from app.feed import Feed
from bench.common import STATUSES, add_arguments, format_table, machine_info, percentile, run_measure

TENANT = "bench"
OTHER_TENANT = "bench-other"
WRITERS = 8  # writers at saturation, each on its own state; the paced load is spread over them too
PACED_RATE = 500.0  # deltas per second
CROWDED_RATE = 20.0  # deltas per second of this tenant while another tenant's writers saturate the server
DRAIN_SECONDS = 30.0  # beyond the poll interval, the most a phase waits for its last receipts
POLL_SECONDS = 5.0  # the service's and the Feed's default feed_poll_seconds
SUBSCRIBERS = ("feed_tenant", "feed_state", "sse_tenant", "sse_state")
STATES = [f"feed-{n}" for n in range(WRITERS)]


# The commit is timed by PostgreSQL's clock_timestamp() as the last thing before the commit (so
# neither the writer's nor the subscriber's event loop can skew it) and the receipt by this
# process's wall clock: the same clock when the server runs on this machine.
APPLY_TIMED = (
    "SELECT (sms.apply_delta($1, $2, $3::jsonb, p_actor => $4) ->> 'version')::bigint,"
    " extract(epoch FROM clock_timestamp())::float8"
)


@dataclass(frozen=True)
class Plan:
    paced_seconds: float
    saturation_seconds: float  # per round and NOTIFY setting
    rounds: int  # NOTIFY on and off alternate, so a noisy minute hits both alike
    warmup_seconds: float


FULL = Plan(paced_seconds=10, saturation_seconds=6, rounds=2, warmup_seconds=2)
QUICK = Plan(paced_seconds=2, saturation_seconds=2, rounds=1, warmup_seconds=0.5)


# The writers' process


@dataclass(frozen=True)
class Load:
    """One phase's writers: `rate` deltas/s over this tenant's states (None: as fast as they go),
    NOTIFY on or off, and optionally as many writers of another tenant at full speed beside them."""

    seconds: float
    rate: float | None
    notify: bool = True
    other_tenant: bool = False


class Commit(NamedTuple):
    """One of this tenant's deltas: its state and version, when it began to commit (the server's
    clock) and when its writer had the result (this machine's clock)."""

    fsa_id: str
    version: int
    at: float
    acked: float


def write(url: str, load: Load) -> tuple[list[Commit], float]:
    """This tenant's deltas, and the seconds they took."""
    return asyncio.run(_write(url, load))


async def _write(url: str, load: Load) -> tuple[list[Commit], float]:
    size = WRITERS * (2 if load.other_tenant else 1)
    db = await Database.connect(url, min_size=size, max_size=size, notify=load.notify)
    commits: list[Commit] = []
    start = time.monotonic()
    deadline = start + load.seconds
    done = asyncio.Event()

    async def writer(number: int) -> None:
        fsa_id, sent = STATES[number], 0
        while time.monotonic() < deadline:
            if load.rate is not None:  # open loop: delta k of writer n is due at (k·WRITERS + n) / rate
                due = start + (sent * WRITERS + number) / load.rate
                if due > time.monotonic():
                    await asyncio.sleep(due - time.monotonic())
            async with db.pool.acquire() as conn:  # the service's pool, with its sms.notify setting
                version, committed = await conn.fetchrow(APPLY_TIMED, TENANT, fsa_id, delta(number, sent), f"w{number}")
            commits.append(Commit(fsa_id, version, committed, time.time()))
            sent += 1

    async def other_writer(number: int) -> None:
        sent = 0
        while not done.is_set():
            await db.apply_delta(OTHER_TENANT, f"other-{number}", delta(number, sent), WriteMeta())
            sent += 1

    try:
        others = [asyncio.create_task(other_writer(n)) for n in range(WRITERS if load.other_tenant else 0)]
        await asyncio.gather(*(writer(n) for n in range(WRITERS)))
        elapsed = time.monotonic() - start
        done.set()
        await asyncio.gather(*others)
    finally:
        await db.close()
    return commits, elapsed


def delta(writer: int, number: int) -> str:
    """A tiny delta of the kind agents send (~100 bytes)."""
    task = f"TASK_{(writer * 7 + number) % 50:03d}"
    return json.dumps(
        {f"tasks.{task}.status": STATUSES[number % len(STATUSES)], "metrics.ctr": {"$inc": 0.2}},
        separators=(",", ":"),
    )


# The service's process


def serve(url: str, port_sender: Any) -> None:
    """The service on 127.0.0.1 (an ephemeral port, sent back), until terminated."""
    import uvicorn

    from app.api.app import create_app
    from app.settings import Settings

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY: see merge
    sock.bind(("127.0.0.1", 0))
    port_sender.send(sock.getsockname()[1])
    settings = Settings(database_url=url, pool_min_size=4, pool_max_size=20, feed_poll_seconds=POLL_SECONDS)
    uvicorn.Server(uvicorn.Config(create_app(settings, url), log_level="warning")).run(sockets=[sock])


@contextlib.asynccontextmanager
async def service(url: str) -> AsyncIterator[httpx.AsyncClient]:
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=serve, args=(url, sender), daemon=True)
    process.start()
    try:
        port = await asyncio.to_thread(receiver.recv)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=httpx.Timeout(10, read=None)
        ) as client:
            async with asyncio.timeout(60):
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/health")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
            yield client
    finally:
        process.terminate()
        await asyncio.to_thread(process.join, 10)
        if process.is_alive():
            process.kill()


# The subscribers (this process)


class Receipts:
    """When each subscriber received each (fsa_id, version)."""

    def __init__(self) -> None:
        self.at: dict[str, dict[tuple[str, int], float]] = {name: {} for name in SUBSCRIBERS}
        self.arrived = asyncio.Event()

    async def feed(self, feed: Feed, name: str, fsa_id: str | None) -> None:
        seen = self.at[name]
        async for change in feed.subscribe(TENANT, fsa_id):
            seen.setdefault((change.fsa_id, change.version), time.time())
            self.arrived.set()

    async def sse(self, client: httpx.AsyncClient, name: str, fsa_id: str | None) -> None:
        seen = self.at[name]
        url = f"/state/{TENANT}/{fsa_id}/events" if fsa_id else f"/events?tenant={TENANT}"
        async with client.stream("GET", url) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.startswith("id: "):
                    state, _, version = line[4:].rpartition(":")
                    seen.setdefault((state or fsa_id, int(version)), time.time())
                    self.arrived.set()

    async def drained(self, commits: list[Commit]) -> None:
        """Returns once every subscriber has received every one of these commits."""
        pending = [(commit.fsa_id, commit.version) for commit in commits]
        while pending:
            self.arrived.clear()
            pending = [key for key in pending if not all(key in seen for seen in self.at.values())]
            if pending:
                await self.arrived.wait()

    def latencies_ms(self, name: str, commits: list[Commit]) -> list[float]:
        seen = self.at[name]
        return [(seen[c.fsa_id, c.version] - c.at) * 1000 for c in commits if (c.fsa_id, c.version) in seen]


async def run_phase(
    executor: ProcessPoolExecutor, url: str, receipts: Receipts | None, label: str, load: Load
) -> dict[str, Any]:
    """Runs the writers; with `receipts`, waits for every subscriber to have every delta."""
    commits, elapsed = await asyncio.get_running_loop().run_in_executor(executor, write, url, load)
    result: dict[str, Any] = {
        "phase": label,
        "deltas": len(commits),
        "writer_ops_s": len(commits) / elapsed,
        "commit_p50_ms": percentile([(c.acked - c.at) * 1000 for c in commits], 50),
    }
    if receipts is not None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(POLL_SECONDS + DRAIN_SECONDS):
                await receipts.drained(commits)
        for name in SUBSCRIBERS:
            samples = receipts.latencies_ms(name, commits)
            result[f"{name}_missing"] = len(commits) - len(samples)
            for q in (0, 50, 99):
                result[f"{name}_p{q}_ms"] = percentile(samples, q) if samples else float("nan")
    print(f"  {label}: {len(commits):,} deltas, {result['writer_ops_s']:,.0f}/s", flush=True)
    return result


def merged(label: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Several rounds of one phase: throughput is the median of the rounds, latencies the worst."""
    result = {"phase": label, "deltas": sum(r["deltas"] for r in rounds)}
    result["writer_ops_s"] = statistics.median(r["writer_ops_s"] for r in rounds)
    for key in rounds[0]:
        if key.endswith("_ms"):
            result[key] = max(r[key] for r in rounds)
        elif key.endswith("_missing"):
            result[key] = sum(r[key] for r in rounds)
    return result


async def saturation_rounds(
    executor: ProcessPoolExecutor, url: str, receipts: Receipts | None, plan: Plan, label: str
) -> list[dict[str, Any]]:
    """NOTIFY on and off, alternating, so that a noisy minute on a shared machine hits both alike."""
    on, off = [], []
    for _ in range(plan.rounds):
        on.append(await run_phase(executor, url, receipts, label, Load(plan.saturation_seconds, None)))
        off.append(
            await run_phase(executor, url, receipts, f"{label}, NOTIFY off", Load(plan.saturation_seconds, None, False))
        )
    return [merged(label, on), merged(f"{label}, NOTIFY off", off)]


async def measure(url: str, plan: Plan) -> tuple[dict[str, str], list[dict[str, Any]]]:
    async with contextlib.AsyncExitStack() as stack:
        feed = await stack.enter_async_context(Feed.connect(url))
        machine = machine_info(await feed.db.health())
        print("\n".join(f"{key:<11} {value}" for key, value in machine.items()), flush=True)
        client = await stack.enter_async_context(service(url))
        executor = stack.enter_context(
            ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        )
        receipts = Receipts()
        subscribers = [
            receipts.feed(feed, "feed_tenant", None),
            receipts.sse(client, "sse_tenant", None),
            *(receipts.feed(feed, "feed_state", fsa_id) for fsa_id in STATES),
            *(receipts.sse(client, "sse_state", fsa_id) for fsa_id in STATES),
        ]
        tasks = [asyncio.create_task(subscriber) for subscriber in subscribers]
        print("\nphases:", flush=True)
        try:
            await run_phase(executor, url, receipts, "warm-up", Load(plan.warmup_seconds, None))
            paced = f"paced {PACED_RATE:.0f}/s"
            results = [await run_phase(executor, url, receipts, paced, Load(plan.paced_seconds, PACED_RATE))]
            results += await saturation_rounds(executor, url, receipts, plan, "saturation")
            results.append(
                await run_phase(
                    executor,
                    url,
                    receipts,
                    f"paced {CROWDED_RATE:.0f}/s, other tenant saturating",
                    Load(plan.paced_seconds, CROWDED_RATE, other_tenant=True),
                )
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # the listeners stay: the service's and the Feed's LISTEN connections still get every NOTIFY
        results += await saturation_rounds(executor, url, None, plan, "saturation, no subscribers")
        return machine, results


# The report

COLUMNS = [
    ("deltas", "deltas", "{:,.0f}"),
    ("writer/s", "writer_ops_s", "{:,.0f}"),
    ("commit p50", "commit_p50_ms", "{:,.1f}"),
    *(
        (f"{name.replace('_', ' ')} p{q}", f"{name}_p{q}_ms", "{:,.1f}")
        for name in ("feed_tenant", "feed_state", "sse_tenant", "sse_state")
        for q in (50, 99)
    ),
]


def report(results: list[dict[str, Any]]) -> tuple[str, dict[str, float]]:
    by_phase = {r["phase"]: r for r in results}
    paced, saturated = results[0], by_phase["saturation"]
    crowded = next(r for r in results if "other tenant" in r["phase"])
    ratios = {
        "writer/s, NOTIFY off / on, with subscribers": by_phase["saturation, NOTIFY off"]["writer_ops_s"]
        / saturated["writer_ops_s"],
        "writer/s, NOTIFY off / on, no subscribers": by_phase["saturation, no subscribers, NOTIFY off"]["writer_ops_s"]
        / by_phase["saturation, no subscribers"]["writer_ops_s"],
        f"paced {PACED_RATE:.0f}/s: sse / feed p50, tenant": paced["sse_tenant_p50_ms"] / paced["feed_tenant_p50_ms"],
        f"paced {PACED_RATE:.0f}/s: sse / feed p50, state": paced["sse_state_p50_ms"] / paced["feed_state_p50_ms"],
        "feed tenant p50, saturation / paced": saturated["feed_tenant_p50_ms"] / paced["feed_tenant_p50_ms"],
        "other tenant saturating: feed tenant / state p99": crowded["feed_tenant_p99_ms"]
        / crowded["feed_state_p99_ms"],
    }
    rows = [[r["phase"], *(fmt.format(r[key]) if key in r else "-" for _, key, fmt in COLUMNS)] for r in results]
    return format_table(["phase (latency ms)", *(header for header, *_ in COLUMNS)], rows), ratios


def run(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    machine, results = run_measure(measure, plan)
    table, ratios = report(results)
    missing = {r["phase"]: {n: r[f"{n}_missing"] for n in SUBSCRIBERS if r.get(f"{n}_missing")} for r in results}
    print(f"\nchange feed: commit-to-receipt latency, {WRITERS} writers on {WRITERS} states of one tenant")
    print(table)
    print(
        "feed: app.feed.Feed in this process; sse: GET /events?tenant= and /state/{t}/{f}/events of uvicorn in\n"
        "another process; tenant: one subscriber for the tenant; state: one per state, pooled. Latency: from\n"
        "the server's clock_timestamp() just before COMMIT to the subscriber's receipt. Rows of several rounds:\n"
        "the worst latency, the median writer/s. commit: from clock_timestamp() to the writer's result (the\n"
        "commit's WAL flush and the reply). NOTIFY off: subscribers learn only by polling (every 5 s).\n"
        "no subscribers: writers alone (the two LISTEN connections stay)."
    )
    print("\nratios:")
    print("\n".join(f"  {name:<50} {value:.2f}×" for name, value in ratios.items()))
    if any(missing.values()):
        print(f"\nNOT RECEIVED within {POLL_SECONDS + DRAIN_SECONDS:.0f} s: {missing}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"benchmark": "feed", "machine": machine, "plan": asdict(plan), "results": results, "ratios": ratios},
                indent=2,
            )
        )
    return 1 if any(missing.values()) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.feed", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
