"""Load test: many agents on one shared state through one running service, then exact checks.

N simulated agents work for S seconds on one state (a tenant of its own per run, seeded with a
~100 KB project state from bench.common.make_state). Each agent loops, as fast as the service
answers, over a mix of what agents do (DESIGN §1):

- slice reads of its phase's tasks (`slice=task:<PHASE>_*&k=5`);
- deltas that `$inc` two shared counters (`metrics.tasks_done` by 1, `metrics.story_points` by
  1..8) and its own counter (`load.<agent>.deltas` by 1);
- the same with a compare-and-set of a member only this agent writes (`load.<agent>.seq`, under
  `$expect` of the value it last wrote): it must apply;
- now and then the same with a stale `$expect` (a value its member no longer holds): it must be
  refused with 409 expectation-failed and apply nothing (an expected refusal, not an error);
- heartbeats (`POST /agents/{t}/{f}/{agent}/heartbeat`);
- comments on a task of the state (`POST /tasks/{t}/{f}/{task}/comment`), a task per agent.

About one agent in ten also follows the state's SSE feed (`GET /state/{t}/{f}/events`) for the
whole run. Afterwards it checks, exactly: each counter equals its seed value plus the increments
of the acknowledged deltas (refused ones added nothing); the acknowledged writes got the versions
seed+1..final, each once; each subscriber received every version from its start to the final one,
once and in order; every heartbeat left its agent in `agents_online`; every acknowledged comment
is stored on its task under its own id, no id given twice; and no request failed
unexpectedly (a 5xx, a transport error or timeout, any 4xx but the expected refusals). Speed is
reported — per operation: count, ops/s, p50 and p99 latency, errors — and never checked; the exit
code is 1 when a check fails.

The client is a raw HTTP/1.1 connection per agent and per subscriber (asyncio streams), not
httpx: on the shared 2-core machine, 200 concurrent slice readers on one httpx.AsyncClient made
107-212 requests/s with the client at ~90 % of a core — the client was the limit — where raw
connections made ~1,600/s at ~10 % (20 readers: 670-720/s against 1,750-1,980/s). The run prints
the load generator's own CPU share, so a reader can tell when it, and not the service, was busy.

Without --url it serves a scratch database on SMS_DATABASE_URL's server (or on an embedded
PostgreSQL) with the service in a process of its own (bench/service.py): no key exists there, so the
service serves this loopback client without one and applies no rate limit. With --url it loads
that service, sending --key as X-API-Key: the key needs the admin scope (the seed replaces the
state) and its rate limit applies.

    python -m bench load [--agents 200] [--seconds 60] [--url URL] [--key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import ssl
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.common import PHASES, format_table, machine_info, make_state, percentile, run_measure
from bench.service import served, uvicorn

try:
    from tqdm import tqdm
except ImportError:  # optional (the `bench` extra): without it, a progress line every few seconds
    tqdm = None

STATE_BYTES = 100 * 1024
FSA = "project"
SUBSCRIBER_SHARE = 0.1  # of the agents, also follow the SSE feed
SLICE_K = 5
DONE = "metrics.tasks_done"  # shared: +1 per acknowledged delta
POINTS = "metrics.story_points"  # shared: +1..8 per acknowledged delta (missing until the first)
REQUEST_TIMEOUT = 30.0  # seconds; a request slower than this counts as an error
DRAIN_SECONDS = 30.0  # after the agents stop, the most subscribers may take to reach the final version
PROGRESS_EVERY = 5.0  # seconds between progress lines when tqdm is not installed

SLICE, INC, CAS, STALE, HEARTBEAT, COMMENT, EVENT = (
    "slice read",
    "delta $inc",
    "delta $expect",
    "delta stale $expect",
    "heartbeat",
    "comment",
    "sse event",
)
MIX = {SLICE: 40, INC: 30, CAS: 15, STALE: 5, HEARTBEAT: 10, COMMENT: 5}  # weights of an agent's next operation
OPERATIONS = (*MIX, EVENT)


# The HTTP client


class NoAnswer(Exception):
    """The request got no HTTP answer: the connection failed or closed, or the time ran out."""


# what a failed exchange raises (EOFError: asyncio.IncompleteReadError, the connection closed early;
# ValueError: an answer that is no HTTP)
TRANSPORT_ERRORS = (OSError, EOFError, ValueError, TimeoutError, asyncio.LimitOverrunError)


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def problem(self) -> str:
        """The slug of a problem+json answer (urn:sms:problem:<slug>), or nothing."""
        try:
            body = self.json()
        except ValueError:
            return ""
        return str(body.get("type", "")).removeprefix("urn:sms:problem:") if isinstance(body, dict) else ""


class Connection:
    """One HTTP/1.1 keep-alive connection, one request at a time (an agent's own loop), opened on
    first use and again after a failure. It reads what the service sends — Content-Length or
    chunked bodies — and nothing else HTTP allows; a request that fails is not retried (a write's
    outcome would be unknown)."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        url = urlsplit(base_url)
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if url.scheme == "https" else None
        self.prefix = url.path.rstrip("/")
        extra = {"Host": url.netloc, **(headers or {})}
        self.head = "".join(f"{name}: {value}\r\n" for name, value in extra.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None) -> Answer:
        """The answer to one request (`body`, if any, sent as JSON); NoAnswer when none came."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader = await self._send(method, path, params, body)
                status, headers = await self._read_head(reader)
                content = b"".join([chunk async for chunk in self._body(reader, headers)])
        except TRANSPORT_ERRORS as error:
            self.close()
            raise NoAnswer(type(error).__name__) from None
        if headers.get(b"connection", b"").lower() == b"close":
            self.close()
        return Answer(status, content)

    async def lines(self, path: str, params: dict[str, Any]) -> AsyncIterator[bytes]:
        """The lines of a streamed answer (Server-Sent Events) until the server ends it; NoAnswer
        when the connection fails, or when the answer is no 200."""
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                reader = await self._send("GET", path, params, None)
                status, headers = await self._read_head(reader)
            if status != 200:
                raise NoAnswer(f"HTTP {status}")
            rest = b""
            async for chunk in self._body(reader, headers):
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    yield line
        except TRANSPORT_ERRORS as error:
            raise NoAnswer(type(error).__name__) from None
        finally:
            self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def _send(self, method: str, path: str, params: dict[str, Any] | None, body: Any) -> asyncio.StreamReader:
        if self.reader is None or self.writer is None or self.reader.at_eof():
            self.close()
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.tls)
        target = self.prefix + path + (f"?{urlencode(params)}" if params else "")
        content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        typed = "Content-Type: application/json\r\n" if body is not None else ""
        length = f"Content-Length: {len(content)}\r\n" if method != "GET" else ""
        self.writer.write(f"{method} {target} HTTP/1.1\r\n{self.head}{typed}{length}\r\n".encode() + content)
        return self.reader

    @staticmethod
    async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes]]:
        status_line, *lines = (await reader.readuntil(b"\r\n\r\n"))[:-4].split(b"\r\n")
        fields = (line.partition(b":") for line in lines)
        return int(status_line.split(b" ", 2)[1]), {name.strip().lower(): value.strip() for name, _, value in fields}

    @staticmethod
    async def _body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> AsyncIterator[bytes]:
        if b"content-length" in headers:
            yield await reader.readexactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                yield (await reader.readexactly(size + 2))[:-2]
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, if any
                pass


# What a run measures and checks


@dataclass
class OpStats:
    """One operation's outcomes: latencies (ms) of the expected answers, how many of them came
    within the run's time (its throughput), and the errors."""

    latencies_ms: list[float] = field(default_factory=list)
    in_time: int = 0
    errors: int = 0

    @property
    def count(self) -> int:
        return len(self.latencies_ms)

    def row(self, name: str, seconds: float) -> list[str]:
        quantiles = [f"{percentile(self.latencies_ms, q):,.1f}" if self.latencies_ms else "-" for q in (50, 99)]
        return [name, f"{self.count:,}", f"{self.in_time / seconds:,.0f}", *quantiles, f"{self.errors:,}"]


@dataclass
class LoadResult:
    """What a run did and whether it kept every guarantee (`failures` says which it broke)."""

    agents: int
    subscribers: int
    seconds: float  # how long the agents started operations
    elapsed: float  # until the last of them finished
    client_cpu: float  # this process's CPU time over `elapsed` (1.0: one core busy throughout)
    postgres: str  # the server's version, as /health reports it
    seed_version: int
    final_version: int
    stats: dict[str, OpStats]
    error_kinds: Counter[str]
    failures: list[str]

    @property
    def errors(self) -> int:
        return sum(stats.errors for stats in self.stats.values())

    @property
    def checks_passed(self) -> bool:
        return not self.failures

    def table(self) -> str:
        rows = [self.stats[name].row(name, self.seconds) for name in OPERATIONS]
        return format_table(["operation", "count", "ops/s", "p50 ms", "p99 ms", "errors"], rows)


class Run:
    """What the agents and subscribers of one run share: the service, the state's path, the
    statistics, and the tallies the checks compare the state with."""

    def __init__(self, base_url: str, headers: dict[str, str] | None, tenant: str) -> None:
        self.base_url = base_url
        self.headers = headers
        self.state_path = f"/state/{tenant}/{FSA}"
        self.agent_path = f"/agents/{tenant}/{FSA}"
        self.task_path = f"/tasks/{tenant}/{FSA}"
        self.deadline = 0.0  # the agents start no operation after this (set as they start)
        self.stats = {name: OpStats() for name in OPERATIONS}
        self.error_kinds: Counter[str] = Counter()
        self.sent_at: dict[int, float] = {}  # the version of each acknowledged write -> when it was sent
        self.repeated_versions: list[int] = []  # versions acknowledged more than once
        self.shared = {DONE: 0, POINTS: 0}  # what the acknowledged deltas added to the shared counters

    def connection(self) -> Connection:
        return Connection(self.base_url, self.headers)

    def error(self, operation: str, kind: str) -> None:
        self.stats[operation].errors += 1
        self.error_kinds[f"{operation}: {kind}"] += 1

    def done(self, operation: str, started: float) -> None:
        """An expected answer: its latency, and whether it came within the run's time."""
        finished = time.perf_counter()
        stats = self.stats[operation]
        stats.latencies_ms.append((finished - started) * 1000)
        stats.in_time += finished <= self.deadline

    async def call(
        self, connection: Connection, operation: str, method: str, path: str, status: int = 200, **kwargs: Any
    ) -> Answer | None:
        """The request, timed when its answer is the expected one (`status`; for a 409 the
        expectation-failed problem), counted as an error otherwise. Returns the answer whatever its
        status (a caller keeps its tallies true when a write applied unexpectedly); None when none came."""
        started = time.perf_counter()
        try:
            answer = await connection.request(method, path, **kwargs)
        except NoAnswer as error:
            self.error(operation, str(error))
            return None
        if answer.status != status or (status == 409 and answer.problem != "expectation-failed"):
            self.error(operation, f"HTTP {answer.status} {answer.problem}".rstrip())
        else:
            self.done(operation, started)
        return answer

    def acknowledged(self, answer: Answer, sent: float) -> None:
        """A write's version: the versions check, and the feed's latency, start from it."""
        version = answer.json()["version"]
        if version in self.sent_at:
            self.repeated_versions.append(version)
        self.sent_at[version] = sent

    @property
    def requests(self) -> int:
        return sum(self.stats[name].count + self.stats[name].errors for name in MIX)

    @property
    def errors(self) -> int:
        return sum(stats.errors for stats in self.stats.values())


class Agent:
    """One simulated agent: its connection, its phase, its own members of the state, and what it
    knows of them."""

    def __init__(self, number: int, run: Run) -> None:
        self.run = run
        self.http = run.connection()
        self.name = f"agent{number:03d}"
        self.phase = PHASES[number % len(PHASES)]
        self.rng = random.Random(number)
        self.seq = 0  # load.<name>.seq as this agent last wrote it (nobody else writes it)
        self.deltas = 0  # its acknowledged deltas: what load.<name>.deltas must hold
        self.heartbeats = 0  # its acknowledged heartbeats
        self.task = ""  # the task it comments on (one of the seed's, set once the seed is made)
        self.comment_ids: list[int] = []  # the ids of its acknowledged comments

    async def work(self) -> None:
        """Operations drawn from MIX, back to back, until the deadline (the last one finishes:
        a request cut short would leave its outcome unknown)."""
        actions: dict[str, Callable[[], Awaitable[Any]]] = {
            SLICE: self.read_slice,
            INC: self.increment,
            CAS: self.compare_and_set,
            STALE: self.stale_compare_and_set,
            HEARTBEAT: self.heartbeat,
            COMMENT: self.comment,
        }
        names, weights = list(MIX), list(MIX.values())
        try:
            while time.perf_counter() < self.run.deadline:
                await actions[self.rng.choices(names, weights)[0]]()
        finally:
            self.http.close()

    async def read_slice(self) -> None:
        params = {"slice": f"task:{self.phase}_*", "k": SLICE_K}
        await self.run.call(self.http, SLICE, "GET", f"{self.run.state_path}/slice", params=params)

    async def increment(self) -> bool:
        return await self.delta(INC, {})

    async def compare_and_set(self) -> None:
        """Its own member, from the value it knows: nobody else writes it, so this must apply."""
        if await self.delta(CAS, self.set_seq(expected=self.seq)):
            self.seq += 1

    async def stale_compare_and_set(self) -> None:
        """Expects a value its member no longer holds: must be refused and apply nothing."""
        if await self.delta(STALE, self.set_seq(expected=self.seq - 1), status=409):
            self.seq += 1  # applied after all (an error already): the tallies stay true

    def set_seq(self, expected: int) -> dict[str, Any]:
        path = f"load.{self.name}.seq"
        return {path: self.seq + 1, "$expect": {path: expected}}

    async def delta(self, operation: str, extra: dict[str, Any], status: int = 200) -> bool:
        """A delta of the three counters and `extra`; True when it applied (tallied: the counters
        must show it), whether or not that was the expected answer."""
        points = self.rng.randint(1, 8)
        body = {DONE: {"$inc": 1}, POINTS: {"$inc": points}, f"load.{self.name}.deltas": {"$inc": 1}, **extra}
        sent = time.perf_counter()
        answer = await self.run.call(self.http, operation, "POST", f"{self.run.state_path}/delta", status, body=body)
        if answer is None or answer.status != 200:
            return False
        self.run.acknowledged(answer, sent)
        self.run.shared[DONE] += 1
        self.run.shared[POINTS] += points
        self.deltas += 1
        return True

    async def heartbeat(self) -> None:
        sent = time.perf_counter()
        answer = await self.run.call(self.http, HEARTBEAT, "POST", f"{self.run.agent_path}/{self.name}/heartbeat")
        if answer is not None and answer.status == 200:
            self.run.acknowledged(answer, sent)
            self.heartbeats += 1

    async def comment(self) -> None:
        body = {"author": self.name, "body": f"{self.name}: looked at it"}
        answer = await self.run.call(self.http, COMMENT, "POST", f"{self.run.task_path}/{self.task}/comment", body=body)
        if answer is not None and answer.status == 200:
            self.comment_ids.append(answer.json()["comment_id"])


class Subscriber:
    """An agent that also follows the state's SSE feed from version `since`: the `id:` of each
    event it received, in order, and when."""

    def __init__(self, name: str, run: Run, since: int) -> None:
        self.name = name
        self.run = run
        self.since = since
        self.versions: list[int] = []
        self.received_at: list[float] = []
        self.arrived = asyncio.Event()  # set at each event, and when the stream ends
        self.ended = False  # the stream ended before the run stopped reading it: an error

    async def follow(self) -> None:
        """Reads the stream until cancelled."""
        stream = self.run.connection().lines(f"{self.run.state_path}/events", {"since": self.since})
        try:
            async with contextlib.aclosing(stream):  # cancelled: the connection closes at once
                async for line in stream:
                    if line.startswith(b"id: "):
                        self.versions.append(int(line[4:]))
                        self.received_at.append(time.perf_counter())
                        self.arrived.set()
            self.end("the stream ended")
        except NoAnswer as error:
            self.end(str(error))

    def end(self, why: str) -> None:
        self.ended = True
        self.run.error(EVENT, why)
        self.arrived.set()

    async def reach(self, version: int) -> None:
        """Returns once the stream has delivered `version` (or has ended)."""
        while not self.ended and (not self.versions or self.versions[-1] < version):
            self.arrived.clear()
            await self.arrived.wait()

    def account(self, stats: OpStats, sent_at: dict[int, float], deadline: float) -> None:
        """Its events' latencies — from sending the write to receiving its event: what another
        agent waits to hear of it — and how many came within the run's time."""
        for version, received in zip(self.versions, self.received_at, strict=True):
            if version in sent_at:
                stats.latencies_ms.append((received - sent_at[version]) * 1000)
            stats.in_time += received <= deadline


# The checks


def value_at(document: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, or 0 where there is none (a counter no delta reached)."""
    value: Any = document
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return 0
        value = value[key]
    return value


def some(items: list[str], shown: int = 5) -> str:
    """The first few of a long list, and how many more."""
    return "; ".join(items[:shown]) + (f"; and {len(items) - shown} more" if len(items) > shown else "")


def check_counters(run: Run, agents: list[Agent], seed: dict[str, Any], final: dict[str, Any]) -> list[str]:
    """Every counter holds its seed value plus the increments of the acknowledged deltas; each
    agent's compare-and-set member holds what it last wrote."""
    expected = {path: value_at(seed, path) + added for path, added in run.shared.items()}
    for agent in agents:
        expected[f"load.{agent.name}.deltas"] = agent.deltas
        expected[f"load.{agent.name}.seq"] = agent.seq
    wrong = [
        f"{path} is {value_at(final, path)}, expected {value}"
        for path, value in expected.items()
        if value_at(final, path) != value
    ]
    return [f"{len(wrong)} of {len(expected)} counters are off: {some(wrong)}"] if wrong else []


def check_versions(run: Run, seed_version: int, final_version: int) -> list[str]:
    """The acknowledged writes got the versions seed+1..final, each exactly once: no write was
    lost or applied unacknowledged, and no version was handed out twice."""
    failures = []
    if run.repeated_versions:
        failures.append(f"versions acknowledged twice: {sorted(run.repeated_versions)[:10]}")
    acknowledged = set(run.sent_at)
    expected = set(range(seed_version + 1, final_version + 1))
    if missing := sorted(expected - acknowledged):
        failures.append(f"{len(missing)} versions no write was acknowledged for: {missing[:10]}")
    if beyond := sorted(acknowledged - expected):
        failures.append(f"{len(beyond)} acknowledged versions beyond the final {final_version}: {beyond[:10]}")
    return failures


def feed_fault(versions: list[int], expected: list[int]) -> str | None:
    """What is wrong with a feed that should have delivered `expected`, or None."""
    if versions == expected:
        return None
    counts = Counter(versions)
    faults = []
    if missing := [v for v in expected if v not in counts]:
        faults.append(f"{len(missing)} versions missing (first {missing[:5]})")
    if repeated := sorted(v for v, n in counts.items() if n > 1):
        faults.append(f"{len(repeated)} delivered more than once (first {repeated[:5]})")
    if unexpected := sorted(set(counts) - set(expected)):
        faults.append(f"versions outside {expected[:1]}..{expected[-1:]}: {unexpected[:5]}")
    if disorder := next((i for i in range(1, len(versions)) if versions[i] <= versions[i - 1]), None):
        faults.append(f"out of order at event {disorder}: {versions[disorder - 1]} then {versions[disorder]}")
    return ", ".join(faults)


def check_feeds(subscribers: list[Subscriber], final_version: int) -> list[str]:
    """Each subscriber received every version after its start up to the final one, once, in order."""
    failures = []
    for subscriber in subscribers:
        fault = feed_fault(subscriber.versions, list(range(subscriber.since + 1, final_version + 1)))
        if fault:
            failures.append(f"the feed of {subscriber.name}: {fault}")
    return failures


def check_heartbeats(agents: list[Agent], final: dict[str, Any]) -> list[str]:
    online = final.get("agents_online", {})
    absent = [agent.name for agent in agents if agent.heartbeats and agent.name not in online]
    return [f"{len(absent)} agents' heartbeats left no trace in agents_online: {some(absent)}"] if absent else []


async def check_comments(run: Run, agents: list[Agent]) -> list[str]:
    """Every acknowledged comment is on its task, by its agent, under the id it was answered; no
    id was given twice."""
    ids = [comment_id for agent in agents for comment_id in agent.comment_ids]
    failures = [f"{len(ids) - len(set(ids))} comment ids were given twice"] if len(set(ids)) != len(ids) else []
    missing = []
    for agent in agents:
        if agent.comment_ids:
            listed = (await required(run, "GET", f"{run.task_path}/{agent.task}/comments?limit=1000"))["comments"]
            stored = {comment["comment_id"] for comment in listed if comment["author"] == agent.name}
            missing += [f"{agent.name}: {comment_id}" for comment_id in agent.comment_ids if comment_id not in stored]
    if missing:
        failures.append(f"{len(missing)} acknowledged comments are not stored: {some(missing)}")
    return failures


def check_errors(run: Run) -> list[str]:
    kinds = [f"{kind} ×{count}" for kind, count in run.error_kinds.most_common()]
    return [f"{run.errors} unexpected answers: {some(kinds, 10)}"] if kinds else []


# The run


async def required(run: Run, method: str, path: str, body: Any = None) -> dict[str, Any]:
    """A request of the run's setup or final read, on a connection of its own; it must succeed."""
    connection = run.connection()
    try:
        reply = await connection.request(method, path, body=body)
    except NoAnswer as error:
        raise RuntimeError(f"{method} {run.base_url}{path}: no answer ({error})") from None
    finally:
        connection.close()
    if reply.status != 200:
        raise RuntimeError(
            f"{method} {run.base_url}{path}: HTTP {reply.status} {reply.body[:500].decode(errors='replace')}"
        )
    return reply.json()


def seed_document(agents: list[Agent]) -> dict[str, Any]:
    """The project state, plus each agent's own member: its delta counter and its compare-and-set value."""
    document = make_state(STATE_BYTES)
    document["load"] = {agent.name: {"deltas": 0, "seq": 0} for agent in agents}
    return document


@contextlib.asynccontextmanager
async def progress_display(run: Run, seconds: float, enabled: bool) -> AsyncIterator[None]:
    """A progress bar (tqdm, when installed) or a line every PROGRESS_EVERY seconds, while the agents work."""
    if not enabled:
        yield
        return
    task = asyncio.create_task(show_progress(run, seconds))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def show_progress(run: Run, seconds: float) -> None:
    started = time.perf_counter()
    if tqdm is None:
        while True:
            await asyncio.sleep(PROGRESS_EVERY)
            elapsed = time.perf_counter() - started
            late = "  (the last requests are still out)" if elapsed > seconds else ""
            print(
                f"  {elapsed:4.0f}/{seconds:.0f} s  {run.requests:>9,} requests"
                f"  {run.requests / min(elapsed, seconds):>7,.0f}/s  {run.errors:,} errors{late}",
                flush=True,
            )
    with tqdm(total=round(seconds), unit="s", desc="load", leave=True) as bar:
        while True:
            await asyncio.sleep(0.5)
            bar.update(min(round(time.perf_counter() - started), bar.total) - bar.n)
            bar.set_postfix_str(f"{run.requests:,} requests, {run.errors:,} errors")


async def run_load(
    base_url: str, *, agents: int, seconds: float, headers: dict[str, str] | None = None, progress: bool = True
) -> LoadResult:
    """`agents` agents on one new state of the service at `base_url` for `seconds`, then the
    checks (see the module's docstring). `headers` go with every request (an API key)."""
    run = Run(base_url, headers, f"load-{uuid.uuid4().hex[:12]}")
    postgres = (await required(run, "GET", "/health")).get("postgres", "unknown")
    crew = [Agent(number, run) for number in range(agents)]
    seed = seed_document(crew)
    seed_version = (await required(run, "POST", run.state_path, seed))["version"]
    tasks = sorted(seed["tasks"])
    for number, agent in enumerate(crew):
        agent.task = tasks[number % len(tasks)]
    following_agents = crew[: max(1, round(agents * SUBSCRIBER_SHARE))]
    subscribers = [Subscriber(agent.name, run, seed_version) for agent in following_agents]
    following = [asyncio.create_task(subscriber.follow()) for subscriber in subscribers]
    try:
        started, cpu = time.perf_counter(), time.process_time()
        run.deadline = started + seconds
        async with progress_display(run, seconds, progress):
            await asyncio.gather(*(agent.work() for agent in crew))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        final = await required(run, "GET", run.state_path)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                await asyncio.gather(*(subscriber.reach(final["version"]) for subscriber in subscribers))
    finally:
        for task in following:
            task.cancel()
        await asyncio.gather(*following, return_exceptions=True)
    for subscriber in subscribers:
        subscriber.account(run.stats[EVENT], run.sent_at, run.deadline)
    failures = [
        *check_errors(run),
        *check_counters(run, crew, seed, final["state"]),
        *check_versions(run, seed_version, final["version"]),
        *check_feeds(subscribers, final["version"]),
        *check_heartbeats(crew, final["state"]),
        *await check_comments(run, crew),
    ]
    return LoadResult(
        agents=agents,
        subscribers=len(subscribers),
        seconds=seconds,
        elapsed=elapsed,
        client_cpu=cpu / elapsed,
        postgres=postgres,
        seed_version=seed_version,
        final_version=final["version"],
        stats=run.stats,
        error_kinds=run.error_kinds,
        failures=failures,
    )


# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", type=int, default=200, help="simulated agents (default 200)")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long they work (default 60)")
    parser.add_argument("--url", help="a running service to load (default: one started here on a scratch database)")
    parser.add_argument("--key", help="an API key for --url, sent as X-API-Key (admin scope: it seeds the state)")


async def on_own_service(database_url: str, args: argparse.Namespace) -> LoadResult:
    """The load on the service run in a process of its own on `database_url` (bench/service.py)."""
    async with served(uvicorn(1), database_url) as port:
        return await run_load(f"http://127.0.0.1:{port}", agents=args.agents, seconds=args.seconds)


def report(result: LoadResult) -> str:
    verdict = "PASS" if result.checks_passed else "FAIL"
    lines = [
        f"\nload: {result.agents} agents ({result.subscribers} also following the SSE feed) on one "
        f"{STATE_BYTES // 1024} KB state for {result.seconds:g} s (the last request returned at "
        f"{result.elapsed:.1f} s): versions {result.seed_version + 1}..{result.final_version}",
        result.table(),
        "latency: from sending a request to its answer; sse event: from sending a write to a subscriber's receipt of\n"
        "its event (every subscriber's). ops/s: the answers within the run's time. delta stale $expect: the expected\n"
        f"409 refusals. The load generator (this process) used {result.client_cpu:.0%} of one core.",
        f"\nchecks (exact counters, every version once and in order on every feed, no unexpected answer): {verdict}",
        *(f"  FAIL {failure}" for failure in result.failures),
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    try:
        if args.url:
            headers = {"X-API-Key": args.key} if args.key else None
            result = asyncio.run(run_load(args.url, agents=args.agents, seconds=args.seconds, headers=headers))
        else:
            result = run_measure(on_own_service, args)
    except RuntimeError as error:  # the setup failed: no service there, or a key without rights
        print(f"python -m bench load: {error}", file=sys.stderr)
        return 1
    print("\n".join(f"{key:<11} {value}" for key, value in machine_info(result.postgres).items()))
    print(report(result))
    return 0 if result.checks_passed else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
