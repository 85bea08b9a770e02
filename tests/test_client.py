"""The Python client against the real service on a socket (`live_url`): every method (and its
blocking form), typed errors from problem+json, odd ids, exact decimals or JSON-safe floats,
retries that apply a write exactly once (and never repeat a purge or compaction that may have
happened), subscriptions that end when their state is purged, and read-your-writes through a
lagging read replica.

Failures are injected by a transport that wraps the real one and fails before (or, for a lost
answer, after) forwarding to the live server; the service and database are never mocked.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import re
import threading
import uuid
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from helpers import serving
from test_auth import auth_on, make_key
from test_replicas import primary_url, replay_paused, replica, replica_url, replicated  # noqa: F401 (fixtures)

from app.db import migrate
from state_memory_client import (
    AuthenticationError,
    ConflictError,
    DeltaResult,
    HistoryCompactedError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    PolicyViolationError,
    RateLimitedError,
    ServiceUnavailableError,
    State,
    StateInfo,
    StateMemoryClient,
    StateMemoryError,
    StatePage,
    StatePurgedError,
    StateSlice,
    SyncStateMemoryClient,
    ValidationError,
    jsontext,
)
from state_memory_client import client as client_module

T, F = "acme", "launch"
SEED = {
    "tasks": {
        "DESIGN_001": {"status": "DONE", "team": "design"},
        "DESIGN_002": {"status": "IN_PROGRESS", "team": "design"},
        "DESIGN_003": {"status": "TODO", "team": "design"},
        "IMPLEMENT_001": {"status": "TODO", "team": "backend"},
    },
    "metrics": {"ctr": Decimal("0.25"), "latency_ms": 120},
    "resources": {"cash_balance_usd": Decimal("1000.10"), "inventory": ["gpu-1", "gpu-2"]},
    "agents_online": {"DesignBot": {"status": "online"}, "TestBot": {"status": "idle"}, "Scheduler": {}},
}


class FlakyTransport(httpx.AsyncBaseTransport):
    """The real transport to the live server, after failing attempts as scripted, one per request:
    "connect" raises ConnectError before sending, 503 answers 503 before sending, "lost" sends the
    request and then loses the answer (ReadTimeout), None forwards normally. Records every request."""

    def __init__(self, *failures: str | int | None, repeat: bool = False) -> None:
        self.failures = list(failures)
        self.repeat = repeat
        self.requests: list[httpx.Request] = []
        self.inner = httpx.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        failure = self.failures[0] if self.repeat else (self.failures.pop(0) if self.failures else None)
        if failure == "connect":
            raise httpx.ConnectError("injected: connection refused", request=request)
        if failure == 503:
            problem = {"type": "urn:sms:problem:database-unavailable", "status": 503, "detail": "injected"}
            return httpx.Response(503, json=problem, request=request)
        response = await self.inner.handle_async_request(request)
        if failure == "lost":
            await response.aread()
            await response.aclose()
            raise httpx.ReadTimeout("injected: the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def keys(self) -> list[str]:
        """The idempotency key of each write attempt."""
        return [request.headers["idempotency-key"] for request in self.requests if request.method == "POST"]


async def log_count(database_url: str, tenant: str = T, fsa: str = F) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2", tenant, fsa)
    finally:
        await conn.close()


@pytest.fixture
async def sms(live_url):
    async with StateMemoryClient(live_url) as client:
        yield client


@pytest.fixture
async def seeded(sms):
    await sms.replace_state(T, F, SEED)
    return sms


async def test_read_write_replace(sms):
    empty = await sms.get_state(T, F)
    assert empty == State(tenant_id=T, fsa_id=F, version=0, state={})

    result = await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN", "metrics.ctr": {"$inc": 1}})
    assert isinstance(result, DeltaResult)
    assert (result.success, result.version, result.duplicate) == (True, 1, False)
    assert sorted(result.changed) == ["metrics.ctr", "tasks.T1.status"]
    uuid.UUID(result.delta_id)
    assert (await sms.get_state(T, F)).state == {"tasks": {"T1": {"status": "OPEN"}}, "metrics": {"ctr": 1}}

    replaced = await sms.replace_state(T, F, {"only": [1, 2]}, actor="ops")
    assert replaced.version == 2
    assert await sms.get_state(T, F) == State(T, F, 2, {"only": [1, 2]})


async def test_metadata_and_idempotency_key(sms):
    key = str(uuid.uuid4())
    first = await sms.apply_delta(
        T,
        F,
        {"x": {"$inc": 1}},
        actor="DesignBot",
        lineage_id="sprint-7",
        delta_id=key,
        meta={"pillar": "delivery", "aml_level": "2"},
    )
    again = await sms.apply_delta(T, F, {"x": {"$inc": 1}}, delta_id=key)
    assert (first.delta_id, first.duplicate) == (key, False)
    assert (again.version, again.delta_id, again.duplicate) == (1, key, True)
    with pytest.raises(ConflictError) as caught:
        await sms.apply_delta(T, F, {"x": {"$inc": 5}}, delta_id=key)  # the key of another delta
    assert caught.value.type == "urn:sms:problem:idempotency-key-reused" and caught.value.current_version is None
    [logged] = await sms.deltas(T, F)
    assert (logged["actor"], logged["lineage_id"], logged["delta_id"]) == ("DesignBot", "sprint-7", key)
    assert logged["meta"] == {"pillar": "delivery", "aml_level": 2}  # the level policies saw
    assert (await sms.get_state(T, F)).state == {"x": 1}


async def test_expected_version_conflict(sms):
    await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN"})
    with pytest.raises(ConflictError) as caught:
        await sms.apply_delta(T, F, {"tasks.T1.status": "DONE"}, expected_version=0)
    error = caught.value
    assert (error.status, error.type) == (409, "urn:sms:problem:version-conflict")
    assert error.current_version == 1
    assert error.current == {"tasks.T1.status": "OPEN"}
    assert "version 1" in error.detail
    assert (await sms.apply_delta(T, F, {"tasks.T1.status": "DONE"}, expected_version=1)).version == 2


async def test_expect_conflict(sms):
    await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN"})
    with pytest.raises(ConflictError) as caught:
        await sms.apply_delta(T, F, {"tasks.T1.status": "DONE", "$expect": {"tasks.T1.status": "REVIEW"}})
    assert caught.value.type == "urn:sms:problem:expectation-failed"
    assert (caught.value.current_version, caught.value.current) == (1, {"tasks.T1.status": "OPEN"})
    assert (await sms.get_state(T, F)).version == 1


async def test_validation_errors(sms, live_url):
    await sms.apply_delta(T, F, {"name": "text"})
    with pytest.raises(ValidationError) as caught:
        await sms.apply_delta(T, F, {"name": {"$inc": 1}})
    assert (caught.value.status, caught.value.type) == (422, "urn:sms:problem:type-mismatch")
    assert "name" in caught.value.detail
    assert caught.value.body["success"] is False

    with pytest.raises(ValidationError) as caught:
        await sms.get_slice(T, F, "task:*", where="@.status == ")
    assert (caught.value.status, caught.value.type) == (400, "urn:sms:problem:invalid-predicate")

    async with StateMemoryClient(live_url, headers={"traceparent": "not-a-trace"}) as traced:
        with pytest.raises(ValidationError) as caught:
            await traced.apply_delta(T, F, {"n": 1})
    assert (caught.value.status, caught.value.type) == (400, "urn:sms:problem:malformed-request")
    assert (await sms.get_state(T, F)).version == 1


async def test_not_found_and_too_large(sms, live_url, database_url):
    async with StateMemoryClient(live_url + "/v9") as wrong:
        with pytest.raises(NotFoundError) as caught:
            await wrong.get_state(T, F)
    assert (caught.value.status, caught.value.type) == (404, "urn:sms:problem:not-found")

    with pytest.raises(PayloadTooLargeError) as caught:
        await sms.apply_delta(T, F, {f"k{i}": i for i in range(1001)})
    assert caught.value.status == 413
    with pytest.raises(ValueError):
        await sms.get_state("", F)
    assert await log_count(database_url) == 0


async def test_slices(seeded):
    design = await seeded.get_slice(T, F, "task:DESIGN_*", k=2)
    assert isinstance(design, StateSlice)
    assert list(design.tasks) == ["DESIGN_001", "DESIGN_002"]
    assert (design.version, design.total, design.truncated, design.slice_pattern) == (1, 3, True, "task:DESIGN_*")
    assert design.metrics == design.resources == design.agents == {}
    assert design.summary.startswith(f"State {T}/{F} v1 · slice task:DESIGN_*")

    several = await seeded.get_slice(T, F, ["metric:*", "agent:*bot"])
    assert several.metrics == SEED["metrics"]
    assert several.agents == {"DesignBot": {"status": "online"}, "TestBot": {"status": "idle"}}
    assert several.slice_pattern == "metric:*,agent:*bot"

    cash = await seeded.get_slice(T, F, "resources.cash_balance_usd")
    assert cash.resources == {"cash_balance_usd": Decimal("1000.10")}

    todo = await seeded.get_slice(T, F, "task:*", where='@.status == "TODO"', max_tokens=100)
    assert sorted(todo.tasks) == ["DESIGN_003", "IMPLEMENT_001"]

    await seeded.apply_delta(T, F, {"tasks.IMPLEMENT_001.status": "IN_PROGRESS"})
    recent = await seeded.get_slice(T, F, "task:*", k=1, order="recent")
    assert list(recent.tasks) == ["IMPLEMENT_001"]

    first = await seeded.get_slice(T, F, "resources.inventory")
    second = await seeded.get_slice(T, F, "resources.inventory")
    assert (first.cached, second.cached) == (False, True)
    assert second.summary == first.summary and second.resources == {"inventory": ["gpu-1", "gpu-2"]}


async def test_summary(seeded):
    summary = await seeded.get_summary(T, F)
    assert summary.version == 1
    assert summary.summary.startswith(f"State {T}/{F} v1 · 4 top-level keys")
    assert "tasks: 4 entries" in summary.summary
    short = await seeded.get_summary(T, F, max_tokens=20)
    assert len(short.summary) < len(summary.summary)


async def test_validate_delta(seeded):
    shape = await seeded.validate_delta({"metrics.ctr": {"$inc": 1}})
    assert shape["valid"] is True
    assert shape["ops"] == [{"op": "inc", "path": ["metrics", "ctr"], "value": 1}]

    dry = await seeded.validate_delta({"metrics.ctr": {"$inc": 1}}, T, F)
    assert (dry["valid"], dry["applied"], dry["version"], dry["current_version"]) == (True, False, 2, 1)
    assert dry["changed"] == ["metrics.ctr"]
    with pytest.raises(ValidationError):
        await seeded.validate_delta({"metrics.ctr": {"$add": [1]}}, T, F)
    with pytest.raises(ConflictError):
        await seeded.validate_delta({"$expect": {"metrics.ctr": 0}, "metrics.ctr": 1}, T, F)
    assert await seeded.get_state(T, F) == State(T, F, 1, SEED)


async def test_deltas_follow_pages(sms, monkeypatch):
    for n in range(5):
        await sms.apply_delta(T, F, {"n": n})
    monkeypatch.setattr(client_module, "DELTA_PAGE", 2)
    assert [d["version"] for d in await sms.deltas(T, F)] == [1, 2, 3, 4, 5]
    assert [d["version"] for d in await sms.deltas(T, F, since=2)] == [3, 4, 5]
    assert [d["version"] for d in await sms.deltas(T, F, since=1, limit=3)] == [2, 3, 4]
    assert [d["ops"][0]["value"] for d in await sms.deltas(T, F, since=4)] == [4]
    assert await sms.deltas(T, F, since=5) == []


@pytest.mark.parametrize(
    "odd",
    ["with space", "ünïcødé-名前", "50%25", "a?b#c&d=e", "+plus+", ".x", "%2F"],
)
async def test_odd_ids_are_url_encoded(sms, odd):
    await sms.apply_delta(odd, odd, {"who": odd})
    state = await sms.get_state(odd, odd)
    assert (state.tenant_id, state.fsa_id, state.state) == (odd, odd, {"who": odd})
    assert (await sms.get_slice(odd, odd, "who")).slice == {"who": odd}
    assert len(await sms.deltas(odd, odd)) == 1
    assert (await sms.get_state(T, F)).version == 0  # nothing landed elsewhere


async def test_ids_the_service_refuses_are_refused_before_sending(sms, live_url):
    for bad in ("", "team/a"):
        with pytest.raises(ValueError):
            await sms.apply_delta(bad, F, {"x": 1})
    for unaddressable in (".", ".."):  # sent (encoded), and refused by the service
        with pytest.raises(ValidationError):
            await sms.apply_delta(unaddressable, F, {"x": 1})
    # sent anyway, an encoded "/" is refused by the service rather than routed elsewhere
    async with httpx.AsyncClient(base_url=live_url) as raw:
        response = await raw.post("/state/team%2Fa/f/delta", json={"x": 1})
    assert response.status_code in (404, 422)


async def test_exact_decimals_round_trip(sms):
    big = Decimal("123456789012345678.123456789012345678")  # the most digits a number may have
    await sms.apply_delta(T, F, {"big": big, "price": Decimal("1.10"), "sum": {"$inc": Decimal("0.1")}})
    await sms.apply_delta(T, F, {"sum": {"$inc": Decimal("0.2")}, "tiny": Decimal("1E-18")})
    state = (await sms.get_state(T, F)).state
    assert state["big"] == big and str(state["price"]) == "1.10" and state["sum"] == Decimal("0.3")
    assert state["tiny"] == Decimal("1E-18")
    assert (await sms.get_slice(T, F, "big")).slice == {"big": big}
    assert (await sms.deltas(T, F))[0]["ops"][0]["value"] == big


async def test_conflict_current_is_exact(sms):
    await sms.apply_delta(T, F, {"price": Decimal("1.10")})
    with pytest.raises(ConflictError) as caught:
        await sms.apply_delta(T, F, {"price": 2}, expected_version=0)
    assert str(caught.value.current["price"]) == "1.10"


@pytest.mark.parametrize("failures", [("connect", "connect"), (503, 503), ("connect", 503, "lost")])
async def test_retried_write_applies_exactly_once(live_url, database_url, failures):
    transport = FlakyTransport(*failures)
    async with StateMemoryClient(live_url, transport=transport) as sms:
        result = await sms.apply_delta(T, F, {"counter": {"$inc": 1}}, actor="retrier")
        state = await sms.get_state(T, F)
    assert len(transport.requests) == len(failures) + 2  # the retries, the success, the read
    assert transport.keys() == [result.delta_id] * (len(failures) + 1)
    assert (result.version, result.duplicate) == (1, "lost" in failures)
    assert (state.version, state.state) == (1, {"counter": 1})
    assert await log_count(database_url) == 1


async def test_retries_give_up(live_url, database_url):
    unavailable = FlakyTransport(503, repeat=True)
    async with StateMemoryClient(live_url, transport=unavailable, retries=2) as sms:
        with pytest.raises(ServiceUnavailableError) as caught:
            await sms.apply_delta(T, F, {"x": 1})
    assert (caught.value.status, len(unavailable.requests), len(set(unavailable.keys()))) == (503, 3, 1)

    refused = FlakyTransport("connect", repeat=True)
    async with StateMemoryClient(live_url, transport=refused, retries=1) as sms:
        with pytest.raises(ServiceUnavailableError) as caught:
            await sms.get_state(T, F)
    assert caught.value.status is None and isinstance(caught.value.__cause__, httpx.ConnectError)
    assert len(refused.requests) == 2

    async with StateMemoryClient(live_url, transport=FlakyTransport(503), retries=0) as sms:
        with pytest.raises(ServiceUnavailableError):
            await sms.apply_delta(T, F, {"x": 1})
    assert await log_count(database_url) == 0


async def test_build_context(seeded):
    patterns = ["task:DESIGN_*", "metric:*", "resources.inventory"]
    context = await seeded.build_context(T, F, patterns, k=2, max_tokens=200)
    assert context.startswith(f"## Shared state {T}/{F} (version 1)")
    for pattern in patterns:
        view = await seeded.get_slice(T, F, pattern, k=2, max_tokens=200)
        assert f"### {pattern}\n{view.summary}" in context


def use_blocking_client(base_url: str) -> tuple[State, int]:
    with SyncStateMemoryClient(base_url, retries=1) as sms:
        result = sms.apply_delta(T, F, {"hits": {"$inc": 2}}, actor="script")
        return sms.get_state(T, F), result.version


async def test_sync_client(live_url):
    # in a thread of its own: the live server runs on this test's event loop
    state, version = await asyncio.to_thread(use_blocking_client, live_url)
    assert (state, version) == (State(T, F, 1, {"hits": 2}), 1)


async def test_subscribe_replays_then_follows_live_and_resumes(sms):
    for n in range(3):
        await sms.apply_delta(T, F, {"n": n}, actor="writer")
    await sms.apply_delta(T, "other", {"x": 1})
    changes = sms.subscribe(T, F, since=1)
    seen = [await asyncio.wait_for(anext(changes), 30) for _ in range(2)]
    await sms.apply_delta(T, F, {"tasks.T1.status": "DONE"})
    seen.append(await asyncio.wait_for(anext(changes), 30))
    await changes.aclose()
    assert [(c["fsa_id"], c["version"]) for c in seen] == [(F, 2), (F, 3), (F, 4)]
    assert seen[0]["actor"] == "writer" and seen[-1]["paths"] == ["tasks.T1.status"]

    tenant_wide = sms.subscribe(T, since=f"{F}:3", slice="task:*")
    change = await asyncio.wait_for(anext(tenant_wide), 30)
    await tenant_wide.aclose()
    assert (change["fsa_id"], change["version"]) == (F, 4)


# ---------------------------------------------------------------- reading and time travel


async def test_get_state_at_a_version(sms):
    await sms.apply_delta(T, F, {"n": 1, "tasks.T1.status": "OPEN"})
    await sms.apply_delta(T, F, {"n": 2, "tasks.T1.status": {"$unset": True}})
    assert await sms.get_state(T, F, at_version=1) == State(T, F, 1, {"n": 1, "tasks": {"T1": {"status": "OPEN"}}})
    assert await sms.get_state(T, F, at_version=0) == State(T, F, 0, {})
    assert await sms.get_state(T, F) == State(T, F, 2, {"n": 2, "tasks": {"T1": {}}})
    with pytest.raises(NotFoundError) as caught:
        await sms.get_state(T, F, at_version=3)
    assert caught.value.body["current_version"] == 2


async def test_health(sms):
    health = await sms.health()
    assert (health["status"], health["database"]) == ("ok", "ok")
    assert health["postgres"].split(".")[0].isdigit()


async def test_health_live_and_ready(sms, live_url, conn):
    head, known = migrate.revisions()
    assert await sms.health_live() == {"status": "ok"}
    assert await sms.health_ready() == {"status": "ready", "schema_revision": head}

    older = sorted(known - {head})[0]  # the database says it is at an older revision: not ready
    await conn.execute("UPDATE public.alembic_version SET version_num = $1", older)
    transport = FlakyTransport()  # no failure: it only counts the requests
    async with StateMemoryClient(live_url, transport=transport, retries=1) as probe:
        with pytest.raises(ServiceUnavailableError) as caught:
            await probe.health_ready()
    assert (caught.value.status, caught.value.type) == (503, "urn:sms:problem:not-ready")
    assert older in caught.value.detail and head in caught.value.detail
    assert len(transport.requests) == 2  # retried as any 503 is
    assert await sms.health_live() == {"status": "ok"}

    await conn.execute("UPDATE public.alembic_version SET version_num = $1", head)
    assert (await sms.health_ready())["status"] == "ready"


def live_checks_counted(metrics_text: str) -> float:
    """How many GET /health/live answered 200, by the service's metrics."""
    line = re.search(
        r'^sms_http_request_duration_seconds_count\{(?=[^}]*method="GET")(?=[^}]*route="/health/live")'
        r'(?=[^}]*status="200")[^}]*\} (\S+)$',
        metrics_text,
        re.MULTILINE,
    )
    return float(line.group(1)) if line else 0.0


async def test_metrics_are_prometheus_text(sms):
    before = live_checks_counted(await sms.metrics())
    await sms.health_live()
    after = await sms.metrics()
    assert "# TYPE sms_http_request_duration_seconds histogram" in after
    assert live_checks_counted(after) == before + 1


async def test_list_and_iterate_states(sms, monkeypatch):
    ids = ["run-1", "run-2", "run-3", "scratch", "team x"]
    for fsa in ids:
        await sms.apply_delta(T, fsa, {"tasks.T1.status": "OPEN", "note": fsa})
    await sms.apply_delta(T, "run-2", {"note": "again"})
    await sms.apply_delta("globex", "run-9", {"secret": 1})

    whole = await sms.list_states(T)
    assert isinstance(whole, StatePage) and whole.next is None
    assert [state.fsa_id for state in whole.states] == ids
    run_2 = whole.states[1]
    assert isinstance(run_2, StateInfo)
    assert (run_2.version, run_2.entries) == (2, 3) and run_2.size_bytes > 0  # tasks/T1, tasks, note
    assert run_2.updated_at >= run_2.created_at

    first = await sms.list_states(T, prefix="run-", limit=2)
    assert ([s.fsa_id for s in first.states], first.next) == (["run-1", "run-2"], "run-2")
    last = await sms.list_states(T, prefix="run-", after=first.next, limit=2)
    assert ([s.fsa_id for s in last.states], last.next) == (["run-3"], None)
    assert (await sms.list_states("nobody")).states == []

    monkeypatch.setattr(client_module, "STATE_PAGE", 2)  # three pages
    assert [state.fsa_id async for state in sms.iter_states(T)] == ids
    assert [state.fsa_id async for state in sms.iter_states(T, prefix="run-")] == ids[:3]
    with pytest.raises(ValidationError):
        await sms.list_states(T, limit=1001)


# ---------------------------------------------------------------- writing


async def test_apply_deltas_refuses_a_write_alone(sms, database_url):
    await sms.apply_delta(T, F, {"name": "text"})
    results = await sms.apply_deltas(
        T,
        F,
        [
            {"delta": {"n": {"$inc": 1}}, "actor": "ImplBot", "meta": {"pillar": "delivery"}},
            {"delta": {"name": {"$inc": 1}}},
            {"delta": {"tasks.T1.status": "DONE"}, "expected_version": 2, "delta_id": "t1-done"},
        ],
    )
    applied, refused, done = results
    assert isinstance(applied, DeltaResult) and isinstance(done, DeltaResult)
    assert (applied.version, done.version, done.duplicate) == (2, 3, False)
    assert isinstance(refused, ValidationError) and not isinstance(refused, PolicyViolationError)
    assert (refused.status, refused.type) == (422, "urn:sms:problem:type-mismatch")
    assert "name" in refused.detail
    logged = await sms.deltas(T, F, since=1)
    assert [(d["actor"], d["meta"]) for d in logged] == [("ImplBot", {"pillar": "delivery"}), (None, {})]
    assert (await sms.get_state(T, F)).state == {"name": "text", "n": 1, "tasks": {"T1": {"status": "DONE"}}}

    # the same writes again: the keys named, and those the client made, make them no-ops
    again = await sms.apply_deltas(T, F, [{"delta": {"tasks.T1.status": "DONE"}, "delta_id": "t1-done"}])
    assert [(r.version, r.duplicate) for r in again] == [(3, True)]
    assert await log_count(database_url) == 3


async def test_apply_deltas_atomic_is_all_or_nothing(sms, database_url):
    await sms.apply_delta(T, F, {"name": "text"})
    writes = [{"delta": {"n": {"$inc": 1}}}, {"delta": {"name": {"$inc": 1}}}]
    with pytest.raises(ValidationError) as caught:
        await sms.apply_deltas(T, F, writes, atomic=True)
    assert (caught.value.status, caught.value.type, caught.value.body["index"]) == (
        422,
        "urn:sms:problem:type-mismatch",
        1,
    )
    assert await sms.get_state(T, F) == State(T, F, 1, {"name": "text"})
    results = await sms.apply_deltas(T, F, writes[:1], atomic=True)
    assert [r.version for r in results] == [2]
    assert await log_count(database_url) == 2


async def test_a_retried_batch_applies_once(live_url, database_url):
    transport = FlakyTransport("lost")
    async with StateMemoryClient(live_url, transport=transport) as sms:
        results = await sms.apply_deltas(T, F, [{"delta": {"c": {"$inc": 1}}}, {"delta": {"d": {"$inc": 1}}}])
        state = await sms.get_state(T, F)
    assert [(r.version, r.duplicate) for r in results] == [(1, True), (2, True)]  # the answers of the first try
    assert transport.requests[0].content == transport.requests[1].content  # the same keys, sent again
    assert (state.state, await log_count(database_url)) == ({"c": 1, "d": 1}, 2)


async def test_rollback(sms, database_url):
    await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN", "n": 1})
    await sms.apply_delta(T, F, {"tasks.T1.status": "DONE", "n": 2, "extra": True})
    result = await sms.rollback(T, F, 1, actor="ops", lineage_id="undo-1", meta={"ticket": "42"})
    assert isinstance(result, DeltaResult) and result.version == 3
    assert (await sms.get_state(T, F)).state == {"tasks": {"T1": {"status": "OPEN"}}, "n": 1}
    last = (await sms.deltas(T, F, since=2))[0]
    assert (last["actor"], last["lineage_id"], last["meta"]["ticket"]) == ("ops", "undo-1", "42")

    with pytest.raises(NotFoundError):
        await sms.rollback(T, F, 9)
    with pytest.raises(ConflictError) as caught:
        await sms.rollback(T, F, 0, expected_version=1)
    assert caught.value.current_version == 3
    assert await log_count(database_url) == 3


async def test_heartbeat(sms):
    beat = await sms.heartbeat(T, F, "team/DesignBot", lineage_id="sprint-7")
    assert (beat["success"], beat["agent"], beat["version"]) == (True, "team/DesignBot", 1)
    again = await sms.heartbeat(T, F, "Scheduler")
    state = (await sms.get_state(T, F)).state
    assert state["agents_online"] == {"team/DesignBot": beat["timestamp"], "Scheduler": again["timestamp"]}
    [first, _] = await sms.deltas(T, F)
    assert (first["actor"], first["lineage_id"]) == ("team/DesignBot", "sprint-7")
    for unaddressable in ("", "team//bot", "team/.."):
        with pytest.raises(ValueError):
            await sms.heartbeat(T, F, unaddressable)
    assert (await sms.get_state(T, F)).version == 2


async def test_task_comments(sms):
    await sms.apply_delta(T, F, {"tasks.T1.status": "BLOCKED"})
    comment = await sms.comment_on_task(T, F, "T1", "Waiting on **legal**", actor="DesignBot", is_blocker=True)
    assert (comment["success"], comment["author"], comment["body_md"], comment["is_blocker"]) == (
        True,
        "DesignBot",
        "Waiting on **legal**",
        True,
    )
    await sms.comment_on_task(T, F, "T1", "Unblocked", actor="Scheduler", lineage_id="sprint-7")
    comments = await sms.get_comments(T, F, "T1")
    assert [(c["author"], c["body_md"], c["is_blocker"]) for c in comments] == [
        ("Scheduler", "Unblocked", False),
        ("DesignBot", "Waiting on **legal**", True),
    ]
    assert [c["body_md"] for c in await sms.get_comments(T, F, "T1", limit=1)] == ["Unblocked"]

    with pytest.raises(NotFoundError):
        await sms.comment_on_task(T, F, "T9", "no such task", actor="DesignBot")
    with pytest.raises(ValidationError) as caught:
        await sms.comment_on_task(T, F, "T1", "who wrote this?")
    assert caught.value.status == 422
    assert len(await sms.get_comments(T, F, "T1")) == 2


async def comment_count(database_url: str) -> int:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM sms.task_comments")
    finally:
        await conn.close()


async def test_a_comment_is_retried_only_when_it_never_reached_the_service(live_url, database_url):
    async with StateMemoryClient(live_url) as sms:
        await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN"})
    unreached = FlakyTransport("connect", "connect")
    async with StateMemoryClient(live_url, transport=unreached) as sms:
        await sms.comment_on_task(T, F, "T1", "once", actor="a")
    assert len(unreached.requests) == 3
    for failure in (503, "lost"):  # it may have been stored: a retry could store it twice
        transport = FlakyTransport(failure)
        async with StateMemoryClient(live_url, transport=transport) as sms:
            with pytest.raises(ServiceUnavailableError):
                await sms.comment_on_task(T, F, "T1", f"after {failure}", actor="a")
        assert len(transport.requests) == 1
    assert await comment_count(database_url) == 2  # "once", and the one whose answer was lost


# ---------------------------------------------------------------- history and lineage


async def test_changes_history_diff_and_lineage(sms):
    await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN", "x": 1}, actor="a", lineage_id="L1")
    await sms.apply_delta(T, F, {"tasks.T1.status": "DONE", "x": {"$inc": Decimal("0.5")}}, actor="b")
    await sms.apply_delta(T, "other", {"y": 1}, lineage_id="L1")

    changes = await sms.changes_since(T, F, 1)
    assert (changes["since"], changes["version"], changes["deltas"]) == (1, 2, 1)
    assert {c["path"]: c["new"] for c in changes["changes"]} == {"tasks.T1.status": "DONE", "x": Decimal("1.5")}
    assert changes["digest"].startswith(f"Changes to {T}/{F} v1 -> v2")
    only_tasks = await sms.changes_since(T, F, 0, slice="task:*", max_tokens=8000)
    assert [c["path"] for c in only_tasks["changes"]] == ["tasks.T1.status"]
    with pytest.raises(NotFoundError):
        await sms.changes_since(T, F, 3)

    history = await sms.history(T, F, "tasks.T1.status")
    assert [(h["version"], h["actor"], h.get("old"), h["new"]) for h in history] == [
        (2, "b", "OPEN", "DONE"),
        (1, "a", None, "OPEN"),
    ]
    assert "old" not in history[1]
    assert [h["version"] for h in await sms.history(T, F, "tasks.T1.status", limit=1)] == [2]
    with pytest.raises(ValidationError):
        await sms.history(T, F, "")

    diff = await sms.diff(T, F, 1)
    assert (diff["from"], diff["to"]) == (1, 2)
    assert sorted(diff["patch"], key=lambda op: op["path"]) == [
        {"op": "replace", "path": "/tasks/T1/status", "value": "DONE"},
        {"op": "replace", "path": "/x", "value": Decimal("1.5")},
    ]
    assert (await sms.diff(T, F, 0, 1))["to"] == 1

    lineage = await sms.lineage("L1", tenant=T)
    assert [(d["fsa_id"], d["version"]) for d in lineage] == [(F, 1), ("other", 1)]
    assert len(await sms.lineage("L1", tenant=T, limit=1)) == 1
    assert await sms.lineage("L1", tenant="globex") == []


# ---------------------------------------------------------------- a state's lifecycle


async def test_purge_state_erases_it_and_records_the_erasure(seeded, database_url):
    await seeded.apply_delta(T, F, {"tasks.DESIGN_001.status": "REOPENED"})
    await seeded.set_ttl(T, F, "1d")
    await seeded.apply_delta(T, "other", {"x": 1})
    record = await seeded.purge_state(T, F, actor="dpo")
    assert (record["action"], record["actor"], record["last_version"]) == ("purge", "dpo", 2)
    assert (record["tenant_id"], record["fsa_id"], record["removed"]["deltas"]) == (T, F, 2)
    assert await seeded.get_state(T, F) == State(T, F, 0, {})
    assert (await seeded.deltas(T, F), await log_count(database_url)) == ([], 0)
    assert (await seeded.get_ttl(T, F))["expires_after_seconds"] is None
    assert await seeded.get_state(T, "other") == State(T, "other", 1, {"x": 1})  # the tenant's other state stays
    assert await seeded.erasures(T, F) == [record]  # the record outlives the state

    again = await seeded.purge_state(T, F)  # a state never written (any more): harmless, and recorded
    assert (again["last_version"], set(again["removed"].values())) == (0, {0})
    assert [e["erasure_id"] for e in await seeded.erasures(T, F)] == [again["erasure_id"], record["erasure_id"]]
    assert [e["erasure_id"] for e in await seeded.erasures(T, F, limit=1)] == [again["erasure_id"]]
    assert (await seeded.apply_delta(T, F, {"n": 1})).version == 1  # it starts again


@pytest.mark.parametrize("action", ["purge", "compact"])
async def test_a_purge_or_compaction_is_retried_only_when_it_never_reached_the_service(live_url, action):
    async with StateMemoryClient(live_url) as sms:
        for n in range(3):
            await sms.apply_delta(T, F, {"n": n})
        recorded = []
        for failure in ("connect", 503, "lost"):
            transport = FlakyTransport(failure)
            async with StateMemoryClient(live_url, transport=transport) as flaky:
                if failure == "connect":  # it certainly never reached the service: retried
                    erase = flaky.purge_state(T, F) if action == "purge" else flaky.compact(T, F, 1)
                    assert (await erase)["action"] == action
                else:  # it may have been done: a retry would record a second erasure
                    with pytest.raises(ServiceUnavailableError):
                        await (flaky.purge_state(T, F) if action == "purge" else flaky.compact(T, F, 1))
            recorded.append((len(transport.requests), len(await sms.erasures(T, F))))
    # (attempts, erasures recorded so far): the 503 was injected before the service; the lost answer was done
    assert recorded == [(2, 1), (1, 1), (1, 2)]


async def test_compact_and_the_history_compacted_error(sms):
    for n in range(1, 7):
        await sms.apply_delta(T, F, {"n": n, f"k{n}": True})
    record = await sms.compact(T, F, 4, actor="ops")
    assert (record["action"], record["actor"], record["through_version"], record["last_version"]) == (
        "compact",
        "ops",
        4,
        6,
    )
    assert record["removed"]["deltas"] == 4

    for read in (
        lambda: sms.get_state(T, F, at_version=3),
        lambda: sms.deltas(T, F, since=3),
        lambda: sms.changes_since(T, F, 3),
        lambda: sms.diff(T, F, 3),
        lambda: anext(sms.subscribe(T, F, since=3)),
    ):
        with pytest.raises(HistoryCompactedError) as caught:
            await read()
        assert isinstance(caught.value, NotFoundError)
        assert (caught.value.status, caught.value.type) == (404, "urn:sms:problem:history-compacted")
        assert caught.value.history_from == 4
    assert (await sms.get_state(T, F, at_version=4)).state == {"n": 4, "k1": True, "k2": True, "k3": True, "k4": True}
    assert [d["version"] for d in await sms.deltas(T, F)] == [5, 6]

    with pytest.raises(HistoryCompactedError):  # before the earlier compaction
        await sms.compact(T, F, 2)
    with pytest.raises(NotFoundError) as caught:  # beyond the current version
        await sms.compact(T, F, 7)
    assert (type(caught.value), caught.value.type) == (NotFoundError, "urn:sms:problem:not-found")
    with pytest.raises(ValidationError):
        await sms.compact(T, F, 0)
    assert [e["through_version"] for e in await sms.erasures(T, F)] == [4]
    assert [d["version"] for d in await sms.deltas(T, F)] == [5, 6]


async def test_ttl_is_set_read_and_cleared(sms):
    await sms.apply_delta(T, F, {"n": 1})
    none = await sms.get_ttl(T, F)
    assert (none["expires_after_seconds"], none["expires_at"]) == (None, None) and none["last_write_at"]
    week = await sms.set_ttl(T, F, "7d")
    assert week["expires_after_seconds"] == 7 * 86400 and week["expires_at"] > week["last_write_at"]
    assert await sms.get_ttl(T, F) == week
    assert (await sms.set_ttl(T, F, 90))["expires_after_seconds"] == 90  # whole seconds
    # more seconds than the service's 6 digits: sent in the largest unit that divides them
    assert (await sms.set_ttl(T, F, 30 * 86400))["expires_after_seconds"] == 30 * 86400
    assert (await sms.set_ttl(T, F, None))["expires_after_seconds"] is None
    await sms.set_ttl(T, F, "2h")
    cleared = await sms.clear_ttl(T, F)
    assert (cleared["expires_after_seconds"], cleared["expires_at"]) == (None, None)

    await sms.set_ttl(T, F, "1h")
    for bad in ("7x", "0d", 0, -60, 1_000_001):
        with pytest.raises(ValidationError) as caught:
            await sms.set_ttl(T, F, bad)
        assert (caught.value.status, caught.value.type) == (422, "urn:sms:problem:invalid-value"), bad
    assert (await sms.get_ttl(T, F))["expires_after_seconds"] == 3600
    assert (await sms.get_state(T, F)).version == 1  # a TTL is no delta


async def test_subscribe_ends_with_state_purged_error_and_never_resumes(live_url):
    transport = FlakyTransport()  # no failure: it only records the requests
    async with StateMemoryClient(live_url, transport=transport) as sms:
        await sms.apply_delta(T, F, {"n": 1})
        changes = sms.subscribe(T, F, since=0)
        assert (await asyncio.wait_for(anext(changes), 30))["version"] == 1
        following = asyncio.create_task(anext(changes))
        await sms.purge_state(T, F, actor="dpo")
        with pytest.raises(StatePurgedError) as caught:
            await asyncio.wait_for(following, 30)
        with pytest.raises(StopAsyncIteration):
            await anext(changes)
    error = caught.value
    assert isinstance(error, StateMemoryError) and (error.tenant, error.fsa) == (T, F)
    assert error.data == {"status": "purged", "tenant_id": T, "fsa_id": F, "last_event_id": "1"}
    streams = [request for request in transport.requests if request.url.path.endswith("/events")]
    assert len(streams) == 1  # never reconnected


def follow_until_purged(url: str) -> tuple[list[int], StatePurgedError | None]:
    """A blocking subscribe that purges its state once it has seen a change: the versions seen,
    and the error that ended the loop."""
    seen: list[int] = []
    with SyncStateMemoryClient(url) as sms:
        try:
            for change in sms.subscribe(T, F, since=0):
                seen.append(change["version"])
                sms.purge_state(T, F)
        except StatePurgedError as error:
            return seen, error
    return seen, None


async def test_a_blocking_subscribe_ends_with_state_purged_error(sms, live_url):
    await sms.apply_delta(T, F, {"n": 1})
    seen, error = await asyncio.wait_for(asyncio.to_thread(follow_until_purged, live_url), 60)
    assert seen == [1]
    assert error is not None and error.data["last_event_id"] == "1"
    assert [e["action"] for e in await sms.erasures(T, F)] == ["purge"]


async def test_lifecycle_and_metrics_need_an_admin_key(db, settings):
    admin = await make_key(db, [T], "admin")
    reader = await make_key(db, [T], "read")
    async with serving(replace(settings, **auth_on())) as url:
        async with StateMemoryClient(url, api_key=admin.key) as ops, StateMemoryClient(url, api_key=reader.key) as read:
            await ops.apply_delta(T, F, {"n": 1})
            await ops.apply_delta(T, F, {"n": 2})
            for refused in (
                lambda: read.purge_state(T, F),
                lambda: read.compact(T, F, 1),
                lambda: read.erasures(T, F),
                lambda: read.set_ttl(T, F, "1d"),
                lambda: read.clear_ttl(T, F),
                lambda: read.metrics(),
            ):
                with pytest.raises(PermissionDeniedError):
                    await refused()
            assert (await read.get_ttl(T, F))["expires_after_seconds"] is None  # reading it needs a read key
            assert (await read.get_state(T, F)).version == 2 and await ops.erasures(T, F) == []

            assert "sms_http_request_duration_seconds" in await ops.metrics()
            record = await ops.purge_state(T, F, actor="dpo")
            assert (record["key_id"], record["actor"]) == (admin.key_id, "dpo")


# ---------------------------------------------------------------- configuration, keys and auth


async def test_aliases(sms):
    defaults = await sms.get_aliases(T, F)
    assert defaults["task"] == "tasks"
    assert await sms.set_alias(T, F, "todo", "tasks") == {**defaults, "todo": "tasks"}
    await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN"})
    assert (await sms.get_slice(T, F, "todo:*")).tasks == {"T1": {"status": "OPEN"}}
    assert await sms.remove_alias(T, F, "todo") == defaults
    with pytest.raises(ValidationError):
        await sms.set_alias(T, F, "not an alias", "tasks")


async def test_policies_and_policy_violations(sms):
    rules = [{"path": "resources.inventory", "min": 0}]
    state_rules = await sms.set_policies(T, F, rules)
    assert state_rules["rules"][0]["path"] == "resources.inventory"
    assert (await sms.get_policies(T, F))["rules"] == state_rules["rules"]
    await sms.apply_delta(T, F, {"resources.inventory": 1})
    with pytest.raises(PolicyViolationError) as caught:
        await sms.apply_delta(T, F, {"resources.inventory": {"$inc": -2}})
    assert caught.value.status == 422 and caught.value.violations[0]["path"] == "resources.inventory"
    assert (await sms.get_state(T, F)).state == {"resources": {"inventory": 1}}

    defaults = await sms.set_policies(T, None, [{"path": "tasks.*.status", "enum": ["OPEN", "DONE"]}])
    assert [rule["path"] for rule in defaults["rules"]] == ["tasks.*.status"]
    assert (await sms.get_policies(T))["rules"] == defaults["rules"]
    assert (await sms.get_policies(T, F))["defaults"] == defaults["rules"]
    with pytest.raises(ValidationError):
        await sms.set_policies(T, F, [{"path": "x", "min": "not a number"}])


async def test_keys_and_the_errors_of_auth(db, settings):
    admin = await make_key(db, [T], "admin")
    slow = await make_key(db, [T], "read", rate_limit=0.01)  # its first request, then none for 100 s
    async with serving(replace(settings, **auth_on())) as url:
        async with StateMemoryClient(url, api_key=admin.key) as ops:
            made = await ops.create_key([T], ["read"], label="reader")
            assert made["key"].startswith("sms_") and made["scopes"] == ["read"]
            assert made["key_id"] in [key["key_id"] for key in await ops.list_keys()]
            async with StateMemoryClient(url, api_key=made["key"]) as reader:
                assert (await reader.get_state(T, F)).version == 0
                with pytest.raises(PermissionDeniedError):
                    await reader.apply_delta(T, F, {"x": 1})
                with pytest.raises(NotFoundError):  # a tenant the key does not name is not there
                    await reader.get_state("globex", F)
                assert (await ops.revoke_key(made["key_id"]))["revoked_at"] is not None
                with pytest.raises(AuthenticationError) as caught:
                    await reader.get_state(T, F)
                assert caught.value.status == 401
            with pytest.raises(PermissionDeniedError):
                await ops.create_key(["globex"], ["read"])
        async with StateMemoryClient(url) as anonymous:
            with pytest.raises(AuthenticationError):
                await anonymous.get_state(T, F)
        async with StateMemoryClient(url, api_key=slow.key, retries=0) as limited:
            await limited.get_state(T, F)
            with pytest.raises(RateLimitedError) as caught:
                await limited.get_state(T, F)
            assert caught.value.status == 429


# ---------------------------------------------------------------- numbers


def json_safe(value: Any) -> Any:
    """`value` through json.dumps and back, as an LLM SDK sends it (dataclasses as dicts)."""

    def as_dict(unknown: Any) -> Any:
        if dataclasses.is_dataclass(unknown) and not isinstance(unknown, type):
            return dataclasses.asdict(unknown)
        raise TypeError(f"{type(unknown).__name__} is not JSON")

    return json.loads(json.dumps(value, default=as_dict))


async def test_float_numbers_pass_json_dumps(live_url):
    async with StateMemoryClient(live_url, numbers="float") as sms:
        await sms.apply_delta(T, F, {"price": Decimal("1.10"), "count": 3, "sum": {"$inc": 0.1}}, lineage_id="L")
        await sms.apply_delta(T, F, {"sum": {"$inc": 0.2}, "big": 999_999_999_999_999_999})
        state = await sms.get_state(T, F)
        assert state.state == {"price": 1.1, "count": 3, "sum": 0.3, "big": 999_999_999_999_999_999}
        assert [type(state.state[k]) for k in ("price", "count", "sum", "big")] == [float, int, float, int]
        answers = [
            state,
            await sms.get_slice(T, F, "sum"),
            await sms.deltas(T, F),
            await sms.changes_since(T, F, 0),
            await sms.history(T, F, "sum"),
            await sms.diff(T, F, 0),
            await sms.lineage("L", tenant=T),
            await sms.apply_deltas(T, F, [{"delta": {"sum": {"$inc": 0.5}}}]),
        ]
        for answer in answers:
            assert json_safe(answer) is not None
        assert json_safe(state)["state"]["sum"] == 0.3
        changes = sms.subscribe(T, F, since=0)
        change = await asyncio.wait_for(anext(changes), 30)
        await changes.aclose()
        assert json.loads(json.dumps(change))["ops"][0]["value"] in (1.1, 3, 0.1)
        with pytest.raises(ConflictError) as caught:
            await sms.apply_delta(T, F, {"price": 2}, expected_version=0)
        assert caught.value.current == {"price": 1.1}

    async with StateMemoryClient(live_url) as exact:  # the default: exact, and not what json.dumps takes
        with pytest.raises(TypeError):
            json.dumps((await exact.get_state(T, F)).state)
    with pytest.raises(ValueError):
        StateMemoryClient(live_url, numbers="double")


def test_decode_float_reads_every_number_json_dumps_takes():
    assert jsontext.decode_float(b"[1, -0.5, 1.10, 1E-18, 123456789012345678901234567890]") == [
        1,
        -0.5,
        1.1,
        1e-18,
        123456789012345678901234567890,
    ]
    assert jsontext.decode(b"[1.10]") == [Decimal("1.10")]  # the exact codec is unchanged


# ---------------------------------------------------------------- the blocking client


class WatchedTransport(httpx.AsyncBaseTransport):
    """The real transport; says (to any thread) when an SSE response opens and when it is closed."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.opened = threading.Event()
        self.closed = threading.Event()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if not request.url.path.endswith("/events"):
            return response
        self.opened.set()
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            stream=WatchedStream(response.stream, self.closed),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        await self.inner.aclose()


class WatchedStream(httpx.AsyncByteStream):
    def __init__(self, inner: Any, closed: threading.Event) -> None:
        self.inner = inner
        self.closed = closed

    async def __aiter__(self):
        async for chunk in self.inner:
            yield chunk

    async def aclose(self) -> None:
        await self.inner.aclose()
        self.closed.set()


def test_every_async_method_has_its_blocking_form_and_a_test():
    source = Path(__file__).read_text()
    sync = SyncStateMemoryClient("http://127.0.0.1:9")
    try:
        for name, method in inspect.getmembers(StateMemoryClient, inspect.isfunction):
            if name.startswith("_") or name == "aclose":
                continue
            assert f".{name}(" in source, f"StateMemoryClient.{name} has no test"
            blocking = getattr(sync, name)
            assert blocking.__doc__ == method.__doc__ and callable(blocking)
    finally:
        sync.close()


def follow_in_a_thread(url: str, transport: WatchedTransport) -> tuple[dict[str, Any], bool, list[str]]:
    """The first change of F from a blocking subscribe (leaving its loop then), whether the stream
    was closed before the client was, and the states listed page by page."""
    with SyncStateMemoryClient(url, transport=transport, numbers="float") as sms:
        for change in sms.subscribe(T, F, since=0):
            first = change
            break
        closed_on_break = transport.closed.wait(30)
        listed = [state.fsa_id for state in sms.iter_states(T)]
    return first, closed_on_break, listed


async def test_sync_subscribe_receives_a_change_made_by_another_client(sms, live_url):
    transport = WatchedTransport()
    following = asyncio.create_task(asyncio.to_thread(follow_in_a_thread, live_url, transport))
    assert await asyncio.to_thread(transport.opened.wait, 30), "the subscription never connected"
    await sms.apply_delta(T, F, {"metrics.ctr": {"$inc": Decimal("0.25")}}, actor="writer")
    change, closed_on_break, listed = await asyncio.wait_for(following, 60)
    assert (change["fsa_id"], change["version"], change["actor"]) == (F, 1, "writer")
    assert change["ops"] == [{"op": "inc", "path": ["metrics", "ctr"], "value": 0.25}]  # float mode
    assert closed_on_break
    assert listed == [F]


def close_while_another_thread_waits(url: str, transport: WatchedTransport) -> tuple[bool, bool]:
    """A thread waits on a blocking subscribe where nothing happens; the client is closed from this
    one. Whether that thread's loop ended (without an error), and whether the stream was closed."""
    sms = SyncStateMemoryClient(url, transport=transport)
    outcome: list[str] = []

    def wait_for_changes() -> None:
        try:
            for _ in sms.subscribe(T, F):
                outcome.append("a change")
            outcome.append("ended")
        except BaseException as exc:
            outcome.append(repr(exc))

    waiter = threading.Thread(target=wait_for_changes)
    waiter.start()
    assert transport.opened.wait(30), "the subscription never connected"
    sms.close()
    waiter.join(30)
    with pytest.raises(StateMemoryError):
        sms.get_state(T, F)
    return outcome == ["ended"] and not waiter.is_alive(), transport.closed.is_set()


async def test_closing_the_sync_client_ends_its_subscriptions(live_url):
    ended, closed = await asyncio.to_thread(close_while_another_thread_waits, live_url, WatchedTransport())
    assert ended and closed


async def test_subscribe_does_not_take_the_shutdown_event_for_a_change(settings):
    async with serving(settings) as url:
        sms = StateMemoryClient(url, retries=0)
        await sms.apply_delta(T, F, {"n": 1})
        changes = sms.subscribe(T, F, since=0)
        assert (await asyncio.wait_for(anext(changes), 30))["version"] == 1
        following = asyncio.create_task(anext(changes))
        await asyncio.sleep(0)
    # the service stopped: its streams ended with a `shutdown` event, and nothing answers any more
    try:
        with pytest.raises(ServiceUnavailableError):
            await asyncio.wait_for(following, 60)
    finally:
        await sms.aclose()


# ---------------------------------------------------------------- read-your-writes


async def test_the_reads_send_min_version(seeded):
    """Each read that takes min_version sends it: the service answers with it, and refuses a bad one."""
    reads = {
        "get_state": lambda at_least: seeded.get_state(T, F, min_version=at_least),
        "get_summary": lambda at_least: seeded.get_summary(T, F, min_version=at_least),
        "get_slice": lambda at_least: seeded.get_slice(T, F, "task:*", min_version=at_least),
        "build_context": lambda at_least: seeded.build_context(T, F, ["task:*"], min_version=at_least),
        "deltas": lambda at_least: seeded.deltas(T, F, min_version=at_least),
        "changes_since": lambda at_least: seeded.changes_since(T, F, 0, min_version=at_least),
        "history": lambda at_least: seeded.history(T, F, "tasks.DESIGN_001.status", min_version=at_least),
    }
    for name, read in reads.items():
        assert await read(1), name
        with pytest.raises(ValidationError) as caught:
            await read(-1)
        assert (caught.value.status, caught.value.type) == (400, "urn:sms:problem:malformed-request"), name


async def test_a_read_with_min_version_is_never_older_than_the_write_it_names(settings, request):
    # the streaming replica of tests/test_replicas.py (skipped where the server cannot be replicated)
    standby, primary, reading = map(request.getfixturevalue, ("replica", "primary_url", "replicated"))
    async with serving(replace(settings, **reading)) as url, StateMemoryClient(url) as sms:
        await sms.apply_delta(T, F, {"tasks.T1.status": "OPEN"})
        with replay_paused(standby, primary):
            written = (await sms.apply_delta(T, F, {"tasks.T1.status": "DONE"})).version
            # without min_version the lagging replica answers, from before the write
            assert (await sms.get_state(T, F)).version == 1
            assert (await sms.get_slice(T, F, "task:*")).tasks == {"T1": {"status": "OPEN"}}
            # with it, the primary does once the replica has not caught up in time
            assert await sms.get_state(T, F, min_version=written) == State(
                T, F, 2, {"tasks": {"T1": {"status": "DONE"}}}
            )
            assert (await sms.get_slice(T, F, "task:*", min_version=written)).tasks == {"T1": {"status": "DONE"}}
            assert (await sms.get_summary(T, F, min_version=written)).version == 2
            assert "(version 2)" in await sms.build_context(T, F, ["task:*"], min_version=written)
            assert [d["version"] for d in await sms.deltas(T, F, min_version=written)] == [1, 2]
            assert (await sms.changes_since(T, F, 1, min_version=written))["version"] == 2
            assert (await sms.history(T, F, "tasks.T1.status", min_version=written))[0]["new"] == "DONE"
