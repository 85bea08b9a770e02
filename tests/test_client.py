"""The Python client against the real service on a socket (`live_url`): every method, typed
errors from problem+json, odd ids, exact decimals, and retries that apply a write exactly once.

Failures are injected by a transport that wraps the real one and fails before (or, for a lost
answer, after) forwarding to the live server; the service and database are never mocked.
"""

from __future__ import annotations

import asyncio
import uuid
from decimal import Decimal

import asyncpg
import httpx
import pytest

from state_memory_client import (
    ConflictError,
    DeltaResult,
    NotFoundError,
    PayloadTooLargeError,
    ServiceUnavailableError,
    State,
    StateMemoryClient,
    StateSlice,
    SyncStateMemoryClient,
    ValidationError,
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
