"""Many writers at once (DESIGN §4.3): no lost updates for commutative operators, gap-free
versions, exactly-once idempotent retries — with real concurrent connections, never mocks.

The servers allow 100 connections and the tests connect as a superuser, so the 100-connection
test opens nothing else while its connections are open, and closes every one of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal

import asyncpg
import httpx
import pytest

APPLY = "SELECT sms.apply_delta($1, $2, $3::text::jsonb)::text"
APPLY_WITH_ID = "SELECT sms.apply_delta($1, $2, $3::text::jsonb, p_delta_id => $4)::text"


@contextlib.asynccontextmanager
async def connections(url: str, count: int) -> AsyncIterator[list[asyncpg.Connection]]:
    """`count` connections, all open at once; every one that opened is closed at the end."""
    opened = await asyncio.gather(*(asyncpg.connect(url) for _ in range(count)), return_exceptions=True)
    good = [c for c in opened if isinstance(c, asyncpg.Connection)]
    try:
        failures = [c for c in opened if not isinstance(c, asyncpg.Connection)]
        if failures:
            raise failures[0]
        yield good
    finally:
        await asyncio.gather(*(c.close() for c in good), return_exceptions=True)


async def run_together(workers) -> list:
    """Start all workers at the same moment (after every one is ready) and gather their results."""
    start = asyncio.Event()

    async def gated(worker):
        await start.wait()
        return await worker

    tasks = [asyncio.ensure_future(gated(w)) for w in workers]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


async def check_log(conn: asyncpg.Connection, tenant: str, fsa: str, count: int) -> None:
    """Versions 1..count, each exactly once, and the header at `count`."""
    versions = await conn.fetchval(
        "SELECT array_agg(version ORDER BY version) FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2", tenant, fsa
    )
    assert versions == list(range(1, count + 1))
    ids = await conn.fetchval(
        "SELECT count(DISTINCT delta_id) FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2", tenant, fsa
    )
    assert ids == count
    assert (
        await conn.fetchval("SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", tenant, fsa)
    ) == count


async def document(conn: asyncpg.Connection, tenant: str, fsa: str) -> dict:
    text = await conn.fetchval("SELECT sms.document($1, $2)::text", tenant, fsa)
    return json.loads(text, parse_float=Decimal)


@pytest.mark.parametrize(
    ("step", "expected"), [("1", Decimal(2000)), ("0.1", Decimal("200.0"))], ids=["int", "fraction"]
)
async def test_100_connections_increment_one_counter(database_url, step, expected):
    per_connection = 20
    delta = f'{{"counter": {{"$inc": {step}}}}}'

    async def writer(conn: asyncpg.Connection) -> list[int]:
        versions = []
        for _ in range(per_connection):
            result = json.loads(await conn.fetchval(APPLY, "t", "f", delta))
            assert result["success"] is True
            versions.append(result["version"])
        return versions

    async with connections(database_url, 100) as conns:
        results = await run_together([writer(c) for c in conns])

    returned = sorted(v for versions in results for v in versions)
    assert returned == list(range(1, 2001))  # every caller got its own version
    for versions in results:
        assert versions == sorted(versions)  # one connection's deltas keep their order
    conn = await asyncpg.connect(database_url)
    try:
        counter = (await document(conn, "t", "f"))["counter"]
        assert Decimal(counter) == expected
        if step == "0.1":
            assert isinstance(counter, Decimal)  # exact decimal arithmetic, no binary float drift
        await check_log(conn, "t", "f", 2000)
    finally:
        await conn.close()


async def test_50_http_clients_increment_through_a_real_server(live_url, database_url):
    clients, per_client = 50, 10

    async def writer(index: int) -> list[int]:
        versions = []
        async with httpx.AsyncClient(base_url=live_url, timeout=60) as http:
            for n in range(per_client):
                response = await http.post(
                    "/state/t/f/delta",
                    content=b'{"counter": {"$inc": 1}, "metrics.ctr": {"$inc": 0.1}}',
                    headers={"Content-Type": "application/json"},
                    params={"actor": f"agent-{index}", "lineage_id": f"run-{index}-{n}"},
                )
                assert response.status_code == 200, response.text
                body = response.json()
                assert body["success"] is True
                versions.append(body["version"])
        return versions

    results = await run_together([writer(i) for i in range(clients)])
    total = clients * per_client
    assert sorted(v for versions in results for v in versions) == list(range(1, total + 1))

    async with httpx.AsyncClient(base_url=live_url) as http:
        response = await http.get("/state/t/f")
    state = json.loads(response.text, parse_float=Decimal)
    assert state["version"] == total
    assert state["state"]["counter"] == total
    assert state["state"]["metrics"]["ctr"] == Decimal("50.0")

    conn = await asyncpg.connect(database_url)
    try:
        await check_log(conn, "t", "f", total)
        actors = await conn.fetch("SELECT actor, count(*) FROM sms.deltas GROUP BY actor")
        assert {r["actor"]: r["count"] for r in actors} == {f"agent-{i}": per_client for i in range(clients)}
    finally:
        await conn.close()


async def test_reads_under_writers_show_one_version_whole(live_url):
    # Every delta adds 1 to two collections' counters, so a state's read (version and document,
    # from the SQL functions it calls) is of one moment exactly when both are its version less one.
    writers, per_writer = 8, 15
    seen: list[tuple[int, Decimal, Decimal]] = []
    done = asyncio.Event()
    async with httpx.AsyncClient(base_url=live_url, timeout=60) as http:
        assert (await http.post("/state/t/f", json={"a": {"n": 0}, "b": {"n": 0}})).status_code == 200

        async def writer() -> None:
            for _ in range(per_writer):
                response = await http.post("/state/t/f/delta", json={"a.n": {"$inc": 1}, "b.n": {"$inc": 1}})
                assert response.status_code == 200, response.text

        async def reader(path: str) -> None:
            while not done.is_set():
                response = await http.get(path)
                assert response.status_code == 200, response.text
                body = json.loads(response.text, parse_float=Decimal)
                state = body["state"] if "state" in body else body["slice"]
                seen.append((body["version"] - 1, state["a"]["n"], state["b"]["n"]))

        readers = [
            asyncio.create_task(reader(path))
            for path in ("/state/t/f", "/state/t/f", "/state/t/f/slice?slice=a.n,b.n", "/state/t/f/slice?slice=a.*,b.*")
        ]
        try:
            await run_together([writer() for _ in range(writers)])
        finally:
            done.set()
            await asyncio.gather(*readers)
    assert len(seen) > len(readers)
    assert [(v, a, b) for v, a, b in seen if not v == a == b] == []


async def test_concurrent_set_adds_and_pushes_lose_nothing(database_url):
    """Writers on one entry (tasks.T1): $add to a set and $push to a list, interleaved."""
    writers, per_writer = 40, 10

    async def writer(conn: asyncpg.Connection, w: int) -> None:
        for n in range(per_writer):
            item = f"w{w}-{n}"
            if w % 3 == 0:
                delta = {"tasks.T1.tags": {"$add": [item, "shared"]}}
            elif w % 3 == 1:
                delta = {"tasks.T1.log": {"$push": item}}
            else:
                delta = {"tasks.T1.tags": {"$addToSet": [item, f"w{w}"]}, "tasks.T1.log": {"$push": {"$each": [item]}}}
            await conn.fetchval(APPLY, "t", "f", json.dumps(delta))

    async with connections(database_url, writers) as conns:
        await run_together([writer(c, w) for w, c in enumerate(conns)])

    conn = await asyncpg.connect(database_url)
    try:
        task = (await document(conn, "t", "f"))["tasks"]["T1"]
        tags, log = task["tags"], task["log"]
        expected_tags = {f"w{w}-{n}" for w in range(writers) if w % 3 != 1 for n in range(per_writer)}
        expected_tags |= {"shared"} | {f"w{w}" for w in range(writers) if w % 3 == 2}
        assert len(tags) == len(set(tags))  # a set: no duplicates
        assert set(tags) == expected_tags
        expected_log = [f"w{w}-{n}" for w in range(writers) if w % 3 != 0 for n in range(per_writer)]
        assert sorted(log) == sorted(expected_log)  # every push, exactly once
        # the list is in commit (version) order
        pushed = await conn.fetch(
            """SELECT o -> 'value' -> '$each' ->> 0 AS item FROM sms.deltas, jsonb_array_elements(ops) o
                WHERE o ->> 'op' = 'push' ORDER BY version"""
        )
        assert log == [r["item"] for r in pushed]
        await check_log(conn, "t", "f", writers * per_writer)
    finally:
        await conn.close()


async def test_concurrent_retries_of_one_delta_id_apply_once(database_url):
    """50 connections send the same 10 deltas (same ids), each in its own random order."""
    deltas = [(uuid.uuid4(), json.dumps({"counter": {"$inc": 1}, f"seen.d{i}": {"$inc": 1}})) for i in range(10)]

    async def retrier(conn: asyncpg.Connection, seed: int) -> list[dict]:
        order = deltas[:]
        random.Random(seed).shuffle(order)
        return [
            {**json.loads(await conn.fetchval(APPLY_WITH_ID, "t", "f", delta, delta_id)), "sent": str(delta_id)}
            for delta_id, delta in order
        ]

    async with connections(database_url, 50) as conns:
        results = [r for rs in await run_together([retrier(c, i) for i, c in enumerate(conns)]) for r in rs]

    assert len(results) == 500
    by_id: dict[str, list[dict]] = {}
    for result in results:
        assert result["success"] is True and result["delta_id"] == result["sent"]
        by_id.setdefault(result["delta_id"], []).append(result)
    assert len(by_id) == 10
    for same in by_id.values():
        assert sum(not r["duplicate"] for r in same) == 1  # applied by exactly one caller
        assert len({r["version"] for r in same}) == 1  # and every retry reports that version
    assert sorted(same[0]["version"] for same in by_id.values()) == list(range(1, 11))

    conn = await asyncpg.connect(database_url)
    try:
        state = await document(conn, "t", "f")
        assert state["counter"] == 10
        assert state["seen"] == {f"d{i}": 1 for i in range(10)}
        await check_log(conn, "t", "f", 10)
        logged = {str(r["delta_id"]) for r in await conn.fetch("SELECT delta_id FROM sms.deltas")}
        assert logged == {str(i) for i, _ in deltas}
    finally:
        await conn.close()


async def test_concurrent_http_retries_with_one_idempotency_key(live_url, database_url):
    async def send(http: httpx.AsyncClient) -> dict:
        response = await http.post(
            "/state/t/f/delta",
            json={"counter": {"$inc": 5}},
            headers={"Idempotency-Key": "retry-me-once"},
        )
        assert response.status_code == 200, response.text
        return response.json()

    async with httpx.AsyncClient(base_url=live_url, timeout=60) as http:
        results = await run_together([send(http) for _ in range(30)])
        state = (await http.get("/state/t/f")).json()

    assert {r["version"] for r in results} == {1}
    assert len({r["delta_id"] for r in results}) == 1
    assert sum(not r["duplicate"] for r in results) == 1
    assert state["version"] == 1 and state["state"] == {"counter": 5}
    conn = await asyncpg.connect(database_url)
    try:
        await check_log(conn, "t", "f", 1)
    finally:
        await conn.close()
