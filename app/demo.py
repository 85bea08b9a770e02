"""`sms demo`: five agents share one project state through the client, and what slices save.

It seeds a project (120 tasks across five phases, 50 metrics, resources with cash and a 20-item
inventory, 10 agents online), then runs five agents concurrently for a few rounds: each reads its
slice and writes small deltas (status changes under `$expect`, `$inc`, `$push`/`$remove`, `$max`
heartbeats). It checks the final state (versions gap-free, no lost increments, exact decimals),
then measures each agent's slice against a full read, bytes and latency, and its summary computed
against cached.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random
import socket
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

import httpx

from app.domain.keys import NewKey
from app.settings import Settings
from state_memory_client import ConflictError, StateMemoryClient, StateSlice

PHASES = ("DESIGN", "IMPLEMENT", "TEST", "DEPLOY", "MONITOR")
TASKS_PER_PHASE = 24
PHASE_TEAMS = {
    "DESIGN": ("design",),
    "IMPLEMENT": ("backend", "frontend"),
    "TEST": ("qa",),
    "DEPLOY": ("ops",),
    "MONITOR": ("sre",),
}
TEAM_AGENTS = {
    "design": "DesignBot",
    "backend": "CodeBot",
    "frontend": "CodeBot",
    "qa": "TestRunner",
    "ops": "DeployBot",
    "sre": "IncidentBot",
}
NEXT_STATUS = {"TODO": "IN_PROGRESS", "IN_PROGRESS": "REVIEW", "REVIEW": "DONE"}
METRIC_AREAS = ("api", "web", "db", "queue", "cache", "search", "billing")
METRIC_MEASURES = (
    "p50_latency_ms",
    "p95_latency_ms",
    "error_rate",
    "throughput_rps",
    "uptime_pct",
    "cost_usd",
    "saturation_pct",
)
SHARED_COUNTER = "agent_writes"  # every agent's every delta adds 1: concurrent $inc, none may be lost
AGENTS_ONLINE = {
    "DesignBot": "designer",
    "MetricsCollector": "observer",
    "InventoryManager": "logistics",
    "TaskScheduler": "planner",
    "BudgetMonitor": "finance",
    "CodeBot": "developer",
    "TestRunner": "tester",
    "DeployBot": "release",
    "IncidentBot": "on-call",
    "DocWriter": "writer",
}
CASH_SEED = Decimal("250000.00")
MEASURED_READS = 5  # per agent: full read, slice (summary computed), same slice (summary cached)
WORDS = (
    "migrate schema review latency budget rollout canary alert dashboard cache index retry queue "
    "contract owner backlog sprint audit release hotfix capacity shard replica failover token"
).split()


def seed_state(seed: int = 7) -> dict[str, Any]:
    """The demo project, the same for the same seed (about 100 KB as JSON)."""
    rng = random.Random(seed)
    tasks: dict[str, Any] = {}
    for phase in PHASES:
        for n in range(1, TASKS_PER_PHASE + 1):
            key = f"{phase}_{n:03d}"
            status = rng.choices(("TODO", "IN_PROGRESS", "REVIEW", "DONE", "BLOCKED"), (5, 3, 2, 4, 1))[0]
            if phase == "DESIGN" and n <= 5:
                status = ("IN_PROGRESS", "TODO", "REVIEW", "TODO", "TODO")[n - 1]  # work for DesignBot
            tasks[key] = {
                "title": f"{phase.title()} {' '.join(rng.sample(WORDS, 3))}",
                "status": status,
                "team": rng.choice(PHASE_TEAMS[phase]),
                "priority": rng.choice(("P0", "P1", "P2", "P3")),
                "estimate_hours": rng.randint(2, 40),
                "depends_on": [f"{phase}_{d:03d}" for d in range(max(1, n - 2), n)],
                "description": " ".join(rng.choices(WORDS, k=70)),
                "history": [{"round": r, "note": " ".join(rng.sample(WORDS, 4))} for r in range(2)],
            }
    metrics: dict[str, Any] = {SHARED_COUNTER: 0}
    for area in METRIC_AREAS:
        for measure in METRIC_MEASURES:
            metrics[f"{area}_{measure}"] = Decimal(rng.randint(100, 99_999)) / 100
    return {
        "project": {"name": "launch", "phase": "IMPLEMENT", "owner": "pm@example.com"},
        "tasks": tasks,
        "metrics": metrics,
        "resources": {
            "cash_balance_usd": CASH_SEED,
            "burn_rate_usd_per_day": Decimal("4200.00"),
            "inventory": [f"sku-{1001 + i}" for i in range(20)],
            "compute": {"gpu_hours": 1200, "cpu_hours": 50_000},
        },
        "agents_online": {
            name: {"role": role, "status": "online", "last_seen": 0, "capabilities": rng.sample(WORDS, 3)}
            for name, role in AGENTS_ONLINE.items()
        },
    }


class ByteMeter(httpx.AsyncBaseTransport):
    """The real transport, noting the size of each answer's body as sent (what a reader pays)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.last = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        body = b"".join([chunk async for chunk in response.aiter_raw()])
        await response.aclose()
        self.last = len(body)
        return httpx.Response(
            response.status_code, headers=response.headers, content=body, extensions=response.extensions
        )

    async def aclose(self) -> None:
        await self._inner.aclose()


@dataclass
class AgentReport:
    """One agent's writes in the rounds, and its reads measured after them (medians)."""

    name: str
    spec: str
    full_bytes: int = 0
    slice_bytes: int = 0
    full_ms: float = 0.0
    slice_ms: float = 0.0  # its summary computed
    cached_ms: float = 0.0  # the same read again: its summary from the cache
    cache_flags: list[tuple[bool, bool]] = field(default_factory=list)  # (first read, second read) per probe
    writes: int = 0
    conflicts: int = 0


@dataclass
class DemoReport:
    """What `run_demo` did and measured, and whether the final state holds what was sent."""

    tenant: str
    fsa: str
    rounds: int
    state_bytes: int
    seed_version: int
    final_version: int
    agents: list[AgentReport]
    checks: dict[str, bool]
    context_chars: int

    @property
    def writes(self) -> int:
        return sum(agent.writes for agent in self.agents)

    @property
    def conflicts(self) -> int:
        return sum(agent.conflicts for agent in self.agents)

    def total(self, name: str) -> float:
        return sum(getattr(agent, name) for agent in self.agents)


class Agent(abc.ABC):
    """One agent: a slice it reads and the deltas it writes from what it read."""

    def __init__(self, name: str, lineage: str, pattern: str, k: int | None = None, where: str | None = None) -> None:
        self.name = name
        self.lineage = lineage
        self.pattern = pattern
        self.k = k
        self.where = where
        self.spec = pattern + (f" k{k}" if k else "") + (" where TODO" if where else "")
        self.rng = random.Random(name)
        self.inc_sent: dict[str, Decimal] = {}  # applied $inc per path
        self.last_seen = 0
        self.report = AgentReport(name, self.spec)

    async def read(self, sms: StateMemoryClient, tenant: str, fsa: str, max_tokens: int | None = None) -> StateSlice:
        return await sms.get_slice(tenant, fsa, self.pattern, k=self.k, where=self.where, max_tokens=max_tokens)

    @abc.abstractmethod
    def deltas(self, view: StateSlice, round_no: int) -> list[dict[str, Any]]:
        """What to write after reading `view`; `{}` is a heartbeat only."""

    async def write(self, sms: StateMemoryClient, tenant: str, fsa: str, delta: dict[str, Any]) -> None:
        self.last_seen = max(self.last_seen + 1, int(time.time() * 1000))
        delta = {
            **delta,
            f"agents_online.{self.name}.last_seen": {"$max": self.last_seen},
            f"metrics.{SHARED_COUNTER}": {"$inc": 1},
        }
        try:
            await sms.apply_delta(tenant, fsa, delta, actor=self.name, lineage_id=self.lineage, meta={"pillar": "demo"})
        except ConflictError:
            self.report.conflicts += 1  # someone got there first: read again next round
            return
        self.report.writes += 1
        for path, op in delta.items():
            if isinstance(op, dict) and "$inc" in op:
                self.inc_sent[path] = self.inc_sent.get(path, Decimal(0)) + op["$inc"]


class DesignBot(Agent):
    def deltas(self, view: StateSlice, round_no: int) -> list[dict[str, Any]]:
        for key, task in view.tasks.items():
            if task["status"] in NEXT_STATUS:
                path = f"tasks.{key}.status"
                return [{path: NEXT_STATUS[task["status"]], "$expect": {path: task["status"]}}]
        return [{}]


class TaskScheduler(Agent):
    def deltas(self, view: StateSlice, round_no: int) -> list[dict[str, Any]]:
        if not view.tasks:
            return [{}]
        key, task = next(iter(view.tasks.items()))  # the first task still TODO
        path = f"tasks.{key}"
        assignment = {f"{path}.status": "IN_PROGRESS", f"{path}.assignee": TEAM_AGENTS[task["team"]]}
        return [{**assignment, "$expect": {f"{path}.status": "TODO"}}]


class MetricsCollector(Agent):
    def deltas(self, view: StateSlice, round_no: int) -> list[dict[str, Any]]:
        return [
            {
                f"metrics.{name}": {"$inc": Decimal(self.rng.randint(1, 500)) / 100}
                for name in view.metrics
                if name != SHARED_COUNTER
            }
        ]


class InventoryManager(Agent):
    def deltas(self, view: StateSlice, round_no: int) -> list[dict[str, Any]]:
        inventory = view.resources.get("inventory") or []
        restock = f"sku-{2001 + round_no}-{self.rng.randint(100, 999)}"
        consume = [{"resources.inventory": {"$remove": inventory[:1]}}] if inventory else []
        return [*consume, {"resources.inventory": {"$push": restock}}]


class BudgetMonitor(Agent):
    def deltas(self, view: StateSlice, round_no: int) -> list[dict[str, Any]]:
        spend = Decimal(self.rng.randint(1_000, 500_000)) / 100
        return [{"resources.cash_balance_usd": {"$inc": -spend}}]


def make_agents(lineage: str) -> list[Agent]:
    return [
        DesignBot("DesignBot", lineage, "task:DESIGN_*", k=5),
        MetricsCollector("MetricsCollector", lineage, "metric:*", k=10),
        InventoryManager("InventoryManager", lineage, "resources.inventory"),
        TaskScheduler("TaskScheduler", lineage, "task:*", k=3, where='@.status == "TODO"'),
        BudgetMonitor("BudgetMonitor", lineage, "resources.cash_balance_usd"),
    ]


async def _timed(call: Awaitable[Any]) -> tuple[Any, float]:
    start = time.perf_counter()  # a coroutine runs only once awaited: the clock covers it all
    result = await call
    return result, (time.perf_counter() - start) * 1000


async def _run_agent(agent: Agent, base_url: str, api_key: str | None, tenant: str, fsa: str, rounds: int) -> None:
    """The agent's loop: read its slice, write what follows from it."""
    async with StateMemoryClient(base_url, api_key=api_key) as sms:
        for round_no in range(rounds):
            view = await agent.read(sms, tenant, fsa)
            for delta in agent.deltas(view, round_no):
                await agent.write(sms, tenant, fsa, delta)


async def _measure(agent: Agent, sms: StateMemoryClient, meter: ByteMeter, tenant: str, fsa: str) -> None:
    """Full read against the agent's slice, one request at a time (under the concurrent rounds,
    latencies mostly measure queueing). Each slice read uses a token budget no read used before,
    so the first computes its summary and the second, the same read, finds it in the cache."""
    full, uncached, cached = [], [], []
    for probe in range(MEASURED_READS):
        _, full_ms = await _timed(sms.get_state(tenant, fsa))
        full.append((meter.last, full_ms))
        budget = 301 + probe  # its own cache key
        first, first_ms = await _timed(agent.read(sms, tenant, fsa, max_tokens=budget))
        uncached.append((meter.last, first_ms))
        second, second_ms = await _timed(agent.read(sms, tenant, fsa, max_tokens=budget))
        cached.append(second_ms)
        agent.report.cache_flags.append((first.cached, second.cached))
    report = agent.report
    report.full_bytes = int(statistics.median(size for size, _ in full))
    report.full_ms = statistics.median(ms for _, ms in full)
    report.slice_bytes = int(statistics.median(size for size, _ in uncached))
    report.slice_ms = statistics.median(ms for _, ms in uncached)
    report.cached_ms = statistics.median(cached)


def _checks(
    agents: list[Agent], state: dict[str, Any], seed: dict[str, Any], logged: list[int], first: int
) -> dict[str, bool]:
    """What the service guarantees, checked on the final state against what the agents sent."""
    writes = sum(agent.report.writes for agent in agents)
    sent: dict[str, Decimal] = {}
    for agent in agents:
        for path, amount in agent.inc_sent.items():
            sent[path] = sent.get(path, Decimal(0)) + amount
    metrics = state["metrics"]
    return {
        "versions gap-free": logged == list(range(first + 1, first + writes + 1)),
        "no lost $inc": metrics[SHARED_COUNTER] == writes,
        "exact decimals": all(
            metrics[path.removeprefix("metrics.")] == seed["metrics"][path.removeprefix("metrics.")] + amount
            for path, amount in sent.items()
            if path.startswith("metrics.")
        )
        and state["resources"]["cash_balance_usd"] == CASH_SEED + sent.get("resources.cash_balance_usd", Decimal(0)),
        "inventory kept at 20": len(state["resources"]["inventory"]) == 20,
        "$max heartbeats": all(
            state["agents_online"][agent.name]["last_seen"] == agent.last_seen
            for agent in agents
            if agent.report.writes
        ),
        "summary cache hits": all(flags == (False, True) for agent in agents for flags in agent.report.cache_flags),
    }


async def run_demo(
    base_url: str, *, api_key: str | None = None, tenant: str = "demo", fsa: str = "launch", rounds: int = 5
) -> DemoReport:
    """Seed the state, run the five agents concurrently for `rounds`, probe the summary cache,
    check the result; the measurements and checks as data. `api_key` needs the admin scope (the
    demo replaces the state)."""
    seed = seed_state()
    lineage = f"demo-{uuid.uuid4().hex[:8]}"
    agents = make_agents(lineage)
    meter = ByteMeter()
    async with StateMemoryClient(base_url, api_key=api_key, transport=meter) as sms:
        seeded = await sms.replace_state(tenant, fsa, seed, actor="demo", lineage_id=lineage)
        await asyncio.gather(*(_run_agent(agent, base_url, api_key, tenant, fsa, rounds) for agent in agents))
        final = await sms.get_state(tenant, fsa)
        state_bytes = meter.last
        for agent in agents:
            await _measure(agent, sms, meter, tenant, fsa)
        logged = [delta["version"] for delta in await sms.deltas(tenant, fsa, since=seeded.version)]
        context = await sms.build_context(tenant, fsa, [agent.pattern for agent in agents], k=5)
    return DemoReport(
        tenant=tenant,
        fsa=fsa,
        rounds=rounds,
        state_bytes=state_bytes,
        seed_version=seeded.version,
        final_version=final.version,
        agents=[agent.report for agent in agents],
        checks=_checks(agents, final.state, seed, logged, seeded.version),
        context_chars=len(context),
    )


@contextlib.asynccontextmanager
async def local_service(settings: Settings, database_url: str) -> AsyncIterator[str]:
    """The app served by uvicorn in this event loop on a free 127.0.0.1 port; yields its base URL."""
    import uvicorn

    from app.api.app import begin_shutdown, create_app

    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and without it a
    # small body written after its headers waits for the client's delayed ACK (~40 ms)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    app = create_app(settings, database_url)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("the service stopped while starting")
            await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        begin_shutdown(app)  # SSE streams end with their `shutdown` event rather than hold the exit
        server.should_exit = True
        await task
        sock.close()


def main(url: str | None, settings: Settings, *, api_key: str | None, tenant: str, fsa: str, rounds: int) -> DemoReport:
    """The demo against `url` (with `api_key`, when the service wants keys), or else against the
    app served here on the configured database (SMS_DATABASE_URL, or the embedded PostgreSQL),
    migrated first; there, once keys exist, with a key of its own for the tenant, revoked after."""
    if url:
        return asyncio.run(run_demo(url, api_key=api_key, tenant=tenant, fsa=fsa, rounds=rounds))
    from app.db import embedded, migrate
    from app.db.queries import Database

    db_url = embedded.database_url(settings.database_url, settings.data_dir)
    migrate.upgrade(db_url)

    async def served() -> DemoReport:
        owner = await Database.connect(db_url, min_size=1, max_size=1)
        key = None
        try:
            if await owner.keys_exist():
                key = NewKey.make([tenant], "admin", rate_limit=1e6, label="sms demo", expires_in=timedelta(hours=1))
                await owner.create_key(key)
            async with local_service(settings, db_url) as base_url:
                return await run_demo(base_url, api_key=key and key.key, tenant=tenant, fsa=fsa, rounds=rounds)
        finally:
            if key is not None:
                await owner.revoke_key(key.key_id)
            await owner.close()

    return asyncio.run(served())


def _ratio(big: float, small: float) -> str:
    return f"{big / small:.1f}×" if small else "–"


def render(report: DemoReport) -> str:
    """The report as the table `sms demo` prints."""
    lines = [
        f"State {report.tenant}/{report.fsa}: full state {report.state_bytes:,} bytes "
        f"({TASKS_PER_PHASE * len(PHASES)} tasks, {len(METRIC_AREAS) * len(METRIC_MEASURES) + 1} metrics, "
        f"20 inventory items, {len(AGENTS_ONLINE)} agents online)",
        f"{len(report.agents)} agents × {report.rounds} rounds, concurrently: {report.writes} deltas applied "
        f"(v{report.seed_version} → v{report.final_version}), {report.conflicts} $expect conflicts",
        "",
        f"{'agent':<18}{'slice':<31}{'full B':>9}{'slice B':>9}{'B ratio':>9}"
        f"{'full ms':>9}{'slice ms':>9}{'ms ratio':>9}",
    ]
    for a in report.agents:
        lines.append(
            f"{a.name:<18}{a.spec:<31}{a.full_bytes:>9,}{a.slice_bytes:>9,}{_ratio(a.full_bytes, a.slice_bytes):>9}"
            f"{a.full_ms:>9.2f}{a.slice_ms:>9.2f}{_ratio(a.full_ms, a.slice_ms):>9}"
        )
    full_b, slice_b = report.total("full_bytes"), report.total("slice_bytes")
    full_ms, slice_ms = report.total("full_ms"), report.total("slice_ms")
    lines += [
        f"{'5 agents, total':<49}{int(full_b):>9,}{int(slice_b):>9,}{_ratio(full_b, slice_b):>9}"
        f"{full_ms:>9.2f}{slice_ms:>9.2f}{_ratio(full_ms, slice_ms):>9}",
        "",
        f"{'summary (same slice twice)':<49}{'uncached ms':>12}{'cached ms':>12}{'ratio':>9}",
    ]
    for a in report.agents:
        lines.append(f"{a.name:<49}{a.slice_ms:>12.2f}{a.cached_ms:>12.2f}{_ratio(a.slice_ms, a.cached_ms):>9}")
    lines += [
        "",
        f"build_context of the five slices: {report.context_chars:,} characters "
        f"instead of {report.state_bytes:,} bytes of state",
        "checks: " + ", ".join(f"{name} {'ok' if ok else 'FAILED'}" for name, ok in report.checks.items()),
        f"Latencies: medians of {MEASURED_READS} reads one at a time, after the rounds; slice reads first compute "
        "their summary, then (second column) find it cached.",
    ]
    return "\n".join(lines)
