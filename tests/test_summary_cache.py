"""The summary cache (DESIGN §6): a slice's summary is stored in sms.summary_cache and served
while nothing the slice covers changed, across versions whose deltas touched other things; a hit
answers with the current version; every request shape is its own row; hits are counted; the
cache is bounded per state; and under concurrent writers and readers every answer is exactly the
slice of the state at the version it names, with a summary that agrees with it."""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal
from typing import Any

import asyncpg
import httpx
import pytest
from helpers import add_up_hits

from app.db.queries import Database
from app.errors import Problem
from app.settings import Settings

T, F = "acme", "launch"
URL = f"/state/{T}/{F}"

TASKS = {
    "DESIGN_001": {"status": "DONE", "team": "design", "estimate": 3},
    "DESIGN_002": {"status": "IN_PROGRESS", "team": "design", "estimate": 5},
    "DESIGN_003": {"status": "OPEN", "team": "design", "estimate": 8},
    "IMPLEMENT_001": {"status": "OPEN", "team": "backend", "estimate": 13},
    "TEST_001": {"status": "OPEN", "team": "qa", "estimate": 2},
}
SEED = {
    "tasks": TASKS,
    "metrics": {"ctr": 0.25, "latency_ms": 120},
    "resources": {"cash_balance_usd": 1000, "inventory": ["gpu-1"]},
    "agents_online": {"DesignBot": {"status": "online"}, "MetricsCollector": {"status": "idle"}, "human": {}},
    "phase": "build",
}
DESIGN = {k: v for k, v in TASKS.items() if k.startswith("DESIGN_")}


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


async def seed(client, document: dict[str, Any] = SEED) -> int:
    response = await client.post(URL, json=document)
    assert response.status_code == 200, response.text
    return response.json()["version"]


async def write(client, delta: dict[str, Any]) -> int:
    response = await client.post(f"{URL}/delta", json=delta)
    assert response.status_code == 200, response.text
    return response.json()["version"]


async def get_slice(client, spec: str | list[str], **params: Any) -> dict[str, Any]:
    response = await client.get(f"{URL}/slice", params={"slice": spec, **params})
    assert response.status_code == 200, response.text
    return exact(response.text)


async def cache_rows(conn, client=None) -> list[dict[str, Any]]:
    """The state's cache rows; with the service's `client`, once it has added up its hits."""
    if client is not None:
        await add_up_hits(client)
    rows = await conn.fetch(
        "SELECT cache_key, request::text, version, hits FROM sms.summary_cache"
        " WHERE tenant_id = $1 AND fsa_id = $2 ORDER BY created_at, cache_key",
        T,
        F,
    )
    return [dict(row) for row in rows]


def entry_members(summary: str) -> list[str]:
    return [line[2:].split(":", 1)[0] for line in summary.splitlines() if line.startswith("- ")]


@pytest.fixture
async def seeded(client):
    await seed(client)
    return client


# ---------------------------------------------------------------- hits and misses


async def test_a_second_identical_read_is_a_hit_with_the_same_answer(seeded, conn):
    first = await get_slice(seeded, "task:DESIGN_*", k=5)
    second = await get_slice(seeded, "task:DESIGN_*", k=5)
    assert (first["cached"], second["cached"]) == (False, True)
    assert {k: v for k, v in second.items() if k != "cached"} == {k: v for k, v in first.items() if k != "cached"}
    assert first["slice"] == {"tasks": DESIGN}
    rows = await cache_rows(conn, seeded)
    assert len(rows) == 1 and rows[0]["version"] == 1 and rows[0]["hits"] == 1


async def test_a_hit_read_in_one_snapshot_goes_uncounted_when_its_row_moved_on(seeded, conn, database_url):
    # The service's reads on Citus run in one snapshot (repeatable read): a row updated since
    # cannot be updated there, and the read answers all the same.
    await get_slice(seeded, "metric:*")
    assert (await get_slice(seeded, "metric:*"))["cached"] is True
    [row] = await cache_rows(conn, seeded)
    options = json.loads(row["request"])["options"]  # the service's (its token budget)
    other = await asyncpg.connect(database_url)
    try:
        async with other.transaction(isolation="repeatable_read"):
            await other.fetchval("SELECT count(*) FROM sms.summary_cache")  # takes the snapshot
            assert (await get_slice(seeded, "metric:*"))["cached"] is True
            assert await add_up_hits(seeded) == 1  # updates the row: 2 hits
            read = json.loads(
                await other.fetchval(
                    "SELECT sms.read_slice_counted($1, $2, 'metric:*', NULL, 'key', NULL, $3)::text", T, F, options
                )
            )
            assert read["cached"] is True and read["slice"] == {"metrics": SEED["metrics"]}
    finally:
        await other.close()
    assert [row["hits"] for row in await cache_rows(conn)] == [2]
    assert (await get_slice(seeded, "metric:*"))["cached"] is True
    assert [row["hits"] for row in await cache_rows(conn, seeded)] == [3]


async def test_hits_are_counted(seeded, conn):
    await get_slice(seeded, "agent:*bot")
    for expected in range(1, 6):
        assert (await get_slice(seeded, "agent:*bot"))["cached"] is True
        assert [row["hits"] for row in await cache_rows(conn, seeded)] == [expected]
    await get_slice(seeded, "metric:*")
    hits = {json.loads(row["request"])["spec"]: row["hits"] for row in await cache_rows(conn, seeded)}
    assert hits == {"agent:*bot": 5, "metric:*": 0}


async def test_a_hit_writes_nothing_until_the_service_adds_its_hits_up(seeded, conn):
    # a cached slice is a pure read: its row keeps its version (xmin) until the hits are added up
    await get_slice(seeded, "task:DESIGN_*", k=5)
    row_version = "SELECT xmin::text FROM sms.summary_cache WHERE tenant_id = $1 AND fsa_id = $2"
    stored = await conn.fetchval(row_version, T, F)
    for _ in range(3):
        assert (await get_slice(seeded, "task:DESIGN_*", k=5))["cached"] is True
    assert await conn.fetchval(row_version, T, F) == stored
    assert [row["hits"] for row in await cache_rows(conn)] == [0]
    used = await conn.fetchval("SELECT last_used_at FROM sms.summary_cache")
    assert await add_up_hits(seeded) == 1  # one row took its 3 hits
    assert [row["hits"] for row in await cache_rows(conn)] == [3]
    assert await conn.fetchval("SELECT last_used_at FROM sms.summary_cache") > used
    assert await add_up_hits(seeded) == 0  # nothing counted since


async def test_a_hit_that_revalidates_its_row_is_counted_at_once_and_stores_why(seeded, conn):
    await get_slice(seeded, "task:DESIGN_*", k=5)
    await write(seeded, {"tasks.IMPLEMENT_001.status": "DONE"})  # its collection, not its entries
    [row] = await conn.fetch("SELECT coarse, xmin::text AS xmin FROM sms.summary_cache")
    options = json.loads((await cache_rows(conn))[0]["request"])["options"]
    read = "SELECT sms.read_slice_counted($1, $2, 'task:DESIGN_*', 5, 'key', NULL, $3, false)::text"
    revalidated = json.loads(await conn.fetchval(read, T, F, options))
    assert (revalidated["cached"], revalidated["revalidated"], revalidated.get("counted")) == (True, True, True)
    [after] = await conn.fetch("SELECT coarse, hits FROM sms.summary_cache")
    assert after["coarse"] == revalidated["coarse"] != row["coarse"] and after["hits"] == 1
    plain = json.loads(await conn.fetchval(read, T, F, options))  # valid as last validated: no write
    assert (plain["cached"], plain["revalidated"], plain.get("counted")) == (True, False, None)
    assert [row["hits"] for row in await cache_rows(conn)] == [1]
    # called as SQL users call it, every hit is counted there
    counted = "SELECT sms.read_slice_counted($1, $2, 'task:DESIGN_*', 5, 'key', NULL, $3)::text"
    assert json.loads(await conn.fetchval(counted, T, F, options))["counted"] is True
    assert [row["hits"] for row in await cache_rows(conn)] == [2]


async def test_hits_are_added_up_every_interval_and_when_the_service_stops(make_client, conn):
    async with make_client(slice_hits_seconds=0.05) as client:
        await seed(client)
        await get_slice(client, "metric:*")
        for _ in range(4):
            await get_slice(client, "metric:*")
        for _ in range(200):  # the service adds them up by itself: wait for it, never on a clock
            if [row["hits"] for row in await cache_rows(conn)] == [4]:
                break
            await asyncio.sleep(0.05)
        assert [row["hits"] for row in await cache_rows(conn)] == [4]
    async with make_client(slice_hits_seconds=3600) as client:
        for _ in range(2):
            assert (await get_slice(client, "metric:*"))["cached"] is True
        assert [row["hits"] for row in await cache_rows(conn)] == [4]
    assert [row["hits"] for row in await cache_rows(conn)] == [6]  # added up as it stopped


async def test_hits_of_rows_gone_meanwhile_and_of_several_states_and_tenants(seeded, conn, database_url):
    await get_slice(seeded, "metric:*")
    assert (await get_slice(seeded, "metric:*"))["cached"] is True
    await seeded.post(f"/state/{T}/other", json=SEED)
    await seeded.get(f"/state/{T}/other/slice", params={"slice": "metric:*"})
    assert (await seeded.get(f"/state/{T}/other/slice", params={"slice": "metric:*"})).json()["cached"] is True
    await conn.execute("DELETE FROM sms.summary_cache WHERE fsa_id = $1", F)  # evicted meanwhile
    assert await add_up_hits(seeded) == 1
    hits = await conn.fetch("SELECT fsa_id, hits FROM sms.summary_cache ORDER BY fsa_id")
    assert [tuple(row) for row in hits] == [("other", 1)]


async def test_hits_wait_for_the_next_time_when_the_database_is_away(settings, conn):
    db = await Database.connect(settings.database_url, min_size=1, max_size=2)
    db.slice_hits.count(T, F, "a-key")
    db.slice_hits.count(T, F, "a-key")
    db.slice_hits.count("another", F, "b-key")
    await db.close()  # the database away: every call fails
    with pytest.raises(Problem) as away:
        await db.flush_slice_hits()
    assert away.value.status == 503
    assert db.slice_hits.take() == {T: {(F, "a-key"): 2}, "another": {(F, "b-key"): 1}}


async def test_a_tenant_whose_hits_cannot_be_added_up_keeps_them_and_holds_up_no_other(seeded, conn, settings):
    # The hits of the first tenant counted meet its row locked past the statement timeout: they
    # wait for the next time, and the next tenant's are added up all the same.
    await get_slice(seeded, "metric:*")
    await seeded.post(f"/state/other-tenant/{F}", json=SEED)
    await seeded.get(f"/state/other-tenant/{F}/slice", params={"slice": "metric:*"})
    keys = dict(await conn.fetch("SELECT tenant_id, cache_key FROM sms.summary_cache"))
    db = await Database.connect(settings.database_url, min_size=1, max_size=2, statement_timeout_ms=200)
    locker = await asyncpg.connect(settings.database_url)
    try:
        for tenant_id, hits in ((T, 2), ("other-tenant", 3)):
            for _ in range(hits):
                db.slice_hits.count(tenant_id, F, keys[tenant_id])
        async with locker.transaction():
            await locker.execute("SELECT FROM sms.summary_cache WHERE tenant_id = $1 FOR UPDATE", T)
            with pytest.raises(Problem) as stuck:
                await db.flush_slice_hits()
            assert (stuck.value.status, stuck.value.slug) == (503, "statement-timeout")
        counted = dict(await conn.fetch("SELECT tenant_id, hits FROM sms.summary_cache"))
        assert counted == {T: 0, "other-tenant": 3}
        assert await db.flush_slice_hits() == 1  # the lock gone: the rest, once
        assert dict(await conn.fetch("SELECT tenant_id, hits FROM sms.summary_cache")) == {T: 2, "other-tenant": 3}
        assert db.slice_hits.take() == {}
    finally:
        await locker.close()
        await db.close()


def test_the_interval_of_adding_up_is_a_positive_number(monkeypatch):
    monkeypatch.setenv("SMS_SLICE_HITS_SECONDS", "0.25")
    assert Settings.from_env().slice_hits_seconds == 0.25
    for bad in ("0", "-1", "nan", "soon"):
        monkeypatch.setenv("SMS_SLICE_HITS_SECONDS", bad)
        with pytest.raises(SystemExit, match="SMS_SLICE_HITS_SECONDS"):
            Settings.from_env()
    monkeypatch.delenv("SMS_SLICE_HITS_SECONDS")
    assert Settings.from_env().slice_hits_seconds == 1.0


async def test_adding_up_checks_its_arrays_and_changes_nothing_on_bad_input(seeded, conn):
    await get_slice(seeded, "metric:*")
    [row] = await cache_rows(conn)
    add = "SELECT sms.count_slice_hits($1, $2::text[], $3::text[], $4::bigint[])"
    for fsa_ids, keys, hits in (([F], [row["cache_key"]], [1, 2]), ([F, F], [row["cache_key"]], [1])):
        with pytest.raises(asyncpg.PostgresError) as refused:
            await conn.fetchval(add, T, fsa_ids, keys, hits)
        assert refused.value.sqlstate == "SM001"
    assert [row["hits"] for row in await cache_rows(conn)] == [0]
    # another tenant's row takes nothing from a call for this tenant
    assert await conn.fetchval(add, "someone-else", [F], [row["cache_key"]], [5]) == 0
    assert await conn.fetchval(add, T, [F, F], [row["cache_key"], row["cache_key"]], [2, 3]) == 1
    assert [row["hits"] for row in await cache_rows(conn)] == [5]


async def test_writes_elsewhere_keep_the_entry_and_a_hit_names_the_current_version(seeded, conn):
    first = await get_slice(seeded, "task:DESIGN_*", k=5)
    assert first["summary"].startswith(f"State {T}/{F} v1 · slice task:DESIGN_*: 3 matched")

    version = await write(seeded, {"metrics.ctr": {"$inc": 1}, "agents_online.DesignBot.status": "busy"})
    unrelated = await get_slice(seeded, "task:DESIGN_*", k=5)
    assert unrelated["cached"] is True
    assert unrelated["version"] == version == 2
    assert unrelated["summary"].splitlines()[0] == f"State {T}/{F} v2 · slice task:DESIGN_*: 3 matched"
    assert unrelated["summary"].splitlines()[1:] == first["summary"].splitlines()[1:]
    assert unrelated["slice"] == {"tasks": DESIGN}

    # other tasks, outside the glob
    version = await write(seeded, {"tasks.IMPLEMENT_001.status": "DONE", "tasks.DESIGNER": {"status": "OPEN"}})
    outside = await get_slice(seeded, "task:DESIGN_*", k=5)
    assert (outside["cached"], outside["version"]) == (True, 3)
    assert outside["summary"].startswith(f"State {T}/{F} v3 · ")
    assert outside["slice"] == {"tasks": DESIGN}
    # the row still says which version it was computed at
    assert [row["version"] for row in await cache_rows(conn)] == [1]

    # a key inside the glob's literal-prefix range that the glob does not match
    narrow = await get_slice(seeded, "task:design_00?")
    await write(seeded, {"tasks.DESIGN_0010": {"status": "OPEN"}, "tasks.DESIGN_00": {"status": "OPEN"}})
    again = await get_slice(seeded, "task:design_00?")
    assert (narrow["cached"], again["cached"], again["version"]) == (False, True, 4)
    assert again["slice"] == {"tasks": DESIGN}

    # a response's ETag follows the response's version
    response = await seeded.get(f"{URL}/slice", params={"slice": "task:design_00?"})
    assert response.headers["etag"] == '"4"' and response.json()["cached"] is True


COVERED_WRITES = pytest.mark.parametrize(
    ("delta", "expected"),
    [
        pytest.param(
            {"tasks.DESIGN_002.status": "DONE"},
            {**DESIGN, "DESIGN_002": {**DESIGN["DESIGN_002"], "status": "DONE"}},
            id="covered-entry-changed",
        ),
        pytest.param(
            {"tasks.DESIGN_003.estimate": {"$inc": 1}},
            {**DESIGN, "DESIGN_003": {**DESIGN["DESIGN_003"], "estimate": 9}},
            id="covered-entry-incremented",
        ),
        pytest.param(
            {"tasks.design_004": {"status": "OPEN"}},
            {**DESIGN, "design_004": {"status": "OPEN"}},
            id="new-matching-entry-other-case",
        ),
        pytest.param(
            {"tasks.DESIGN_000": {"status": "OPEN"}},
            {"DESIGN_000": {"status": "OPEN"}, **DESIGN},
            id="new-matching-entry",
        ),
        pytest.param(
            {"tasks.DESIGN_002": {"$unset": True}},
            {k: v for k, v in DESIGN.items() if k != "DESIGN_002"},
            id="matching-entry-unset",
        ),
        pytest.param(
            {"tasks": {"DESIGN_001": {"status": "NEW"}, "OTHER": {}}},
            {"DESIGN_001": {"status": "NEW"}},
            id="collection-replaced",
        ),
        pytest.param(
            {"tasks": {"DESIGN_001": DESIGN["DESIGN_001"], "DESIGN_002": DESIGN["DESIGN_002"], "X": {}}},
            {"DESIGN_001": DESIGN["DESIGN_001"], "DESIGN_002": DESIGN["DESIGN_002"]},
            id="collection-replaced-same-members-but-one",
        ),
        pytest.param({"tasks": {"$unset": True}}, None, id="collection-unset"),
        pytest.param({"tasks": "gone"}, None, id="collection-became-a-scalar"),
        pytest.param(
            {"tasks": {"$merge": {"DESIGN_001": None, "DESIGN_009": {"status": "OPEN"}}}},
            {**{k: v for k, v in DESIGN.items() if k != "DESIGN_001"}, "DESIGN_009": {"status": "OPEN"}},
            id="collection-merged",
        ),
    ],
)


async def made_afresh_then_cached(client, version: int, expected: dict[str, Any] | None) -> dict[str, Any]:
    """task:DESIGN_* after a write it covers: made afresh at `version`, holding what it now matches,
    and the fresh answer cached in its turn. Returns the fresh answer."""
    after = await get_slice(client, "task:DESIGN_*")
    assert (after["cached"], after["version"]) == (False, version)
    assert after["slice"] == ({"tasks": expected} if expected else {})
    assert sorted(entry_members(after["summary"])) == sorted(expected or {})
    again = await get_slice(client, "task:DESIGN_*")
    assert again["cached"] is True and again["slice"] == after["slice"] and again["summary"] == after["summary"]
    return after


@COVERED_WRITES
async def test_writes_to_what_the_slice_covers_are_misses(seeded, conn, delta, expected):
    before = await get_slice(seeded, "task:DESIGN_*")
    assert (await get_slice(seeded, "task:DESIGN_*"))["cached"] is True
    version = await write(seeded, delta)
    assert version == 2
    after = await made_afresh_then_cached(seeded, version, expected)
    assert after["total"] == len(expected or {})
    assert after["summary"].startswith(f"State {T}/{F} v2 · ")
    assert after["summary"] != before["summary"]
    assert [row["version"] for row in await cache_rows(conn)] == [2]


@COVERED_WRITES
async def test_writes_to_what_the_slice_covers_are_misses_also_in_a_batch(seeded, conn, delta, expected):
    """In a batch, a collection's marker row (what a cached slice checks first) moves once, to the
    first version of the batch that changed one of its members."""
    assert (await get_slice(seeded, "task:DESIGN_*"))["cached"] is False
    writes = [
        {"delta": {"metrics.ctr": {"$inc": 1}}},
        {"delta": delta},
        {"delta": {"phase": {"$inc": 1}}},  # refused: phase is a string
        {"delta": {"agents_online.DesignBot.status": "busy"}},
    ]
    response = await seeded.post(f"{URL}/deltas", json=writes)
    assert response.status_code == 200, response.text
    assert [r.get("version") for r in response.json()["results"]] == [2, 3, None, 4]
    await made_afresh_then_cached(seeded, 4, expected)
    markers = dict(
        await conn.fetch(
            "SELECT collection, version FROM sms.entries WHERE tenant_id = $1 AND fsa_id = $2 AND NOT is_member"
            " AND value = '{}'",
            T,
            F,
        )
    )
    assert (markers.get("metrics"), markers.get("agents_online")) == (2, 4)
    if expected is not None:
        assert markers["tasks"] == 3


async def test_replacing_the_whole_state_is_a_miss(seeded):
    await get_slice(seeded, "task:DESIGN_*")
    await seed(seeded, {**SEED, "tasks": {**TASKS, "DESIGN_002": {"status": "DONE"}}})
    after = await get_slice(seeded, "task:DESIGN_*")
    assert (after["cached"], after["version"]) == (False, 2)
    assert after["slice"]["tasks"]["DESIGN_002"] == {"status": "DONE"}


async def test_dotted_paths_and_scalars_are_kept_and_dropped_as_they_change(seeded):
    for spec in ("resources.cash_balance_usd", "phase", "tasks.*.status"):
        assert (await get_slice(seeded, spec))["cached"] is False
        assert (await get_slice(seeded, spec))["cached"] is True

    await write(seeded, {"metrics.latency_ms": 99})
    specs = ("resources.cash_balance_usd", "phase", "tasks.*.status")
    assert [(await get_slice(seeded, s))["cached"] for s in specs] == [True, True, True]

    await write(seeded, {"resources.cash_balance_usd": {"$inc": 5}})
    cash = await get_slice(seeded, "resources.cash_balance_usd")
    assert (cash["cached"], cash["slice"]) == (False, {"resources": {"cash_balance_usd": 1005}})
    assert (await get_slice(seeded, "phase"))["cached"] is True

    await write(seeded, {"phase": "ship"})
    phase = await get_slice(seeded, "phase")
    assert (phase["cached"], phase["slice"], phase["version"]) == (False, {"phase": "ship"}, 4)
    assert "phase = ship" in phase["summary"]

    await write(seeded, {"tasks.TEST_001.status": "DONE"})
    status = await get_slice(seeded, "tasks.*.status")
    assert status["cached"] is False and status["slice"]["tasks"]["TEST_001"] == {"status": "DONE"}


async def test_a_where_filter_sees_entries_that_start_to_match(seeded):
    first = await get_slice(seeded, "task:*", where='@.status == "OPEN"')
    assert sorted(first["slice"]["tasks"]) == ["DESIGN_003", "IMPLEMENT_001", "TEST_001"]
    await write(seeded, {"tasks.DESIGN_001.status": "OPEN"})
    after = await get_slice(seeded, "task:*", where='@.status == "OPEN"')
    assert after["cached"] is False
    assert sorted(after["slice"]["tasks"]) == ["DESIGN_001", "DESIGN_003", "IMPLEMENT_001", "TEST_001"]
    assert after["total"] == 4


async def test_order_recent_is_recomputed_when_the_order_changes(seeded):
    first = await get_slice(seeded, "task:*", order="recent", k=1)
    assert list(first["slice"]["tasks"]) == ["DESIGN_001"]
    await write(seeded, {"tasks.TEST_001.estimate": 1})
    after = await get_slice(seeded, "task:*", order="recent", k=1)
    assert after["cached"] is False and list(after["slice"]["tasks"]) == ["TEST_001"]
    assert entry_members(after["summary"]) == ["TEST_001"]


async def test_each_request_shape_is_its_own_row(seeded, conn):
    shapes = [
        {},
        {"k": 2},
        {"k": 3},
        {"order": "recent"},
        {"where": '@.status == "OPEN"'},
        {"where": '@.status == "DONE"'},
        {"max_tokens": 40},
        {"max_tokens": 500},
        {"k": 2, "order": "recent"},
    ]
    answers = [await get_slice(seeded, "task:*", **shape) for shape in shapes]
    assert [a["cached"] for a in answers] == [False] * len(shapes)
    assert len(await cache_rows(conn)) == len(shapes)
    assert [(await get_slice(seeded, "task:*", **shape))["cached"] for shape in shapes] == [True] * len(shapes)
    again = [await get_slice(seeded, "task:*", **shape) for shape in shapes]
    assert [a["slice"] for a in again] == [a["slice"] for a in answers]
    assert [a["summary"] for a in again] == [a["summary"] for a in answers]
    assert len({answers[i]["summary"] for i in (0, 1, 2, 4, 5)}) == 5
    assert [row["hits"] for row in await cache_rows(conn, seeded)] == [2] * len(shapes)
    # the spec as written is part of the key too, and each state has its own rows
    await get_slice(seeded, ["task:*", "agent:*"])
    await get_slice(seeded, "task:*,agent:*")
    assert len(await cache_rows(conn)) == len(shapes) + 1


async def test_the_cache_is_bounded_per_state(seeded, conn):
    for max_tokens in range(20, 20 + 230):
        await get_slice(seeded, "task:DESIGN_*", max_tokens=max_tokens)
    rows = await conn.fetchval("SELECT count(*) FROM sms.summary_cache WHERE tenant_id = $1 AND fsa_id = $2", T, F)
    assert 0 < rows <= 200
    # the most recent request is still served from the cache
    assert (await get_slice(seeded, "task:DESIGN_*", max_tokens=249))["cached"] is True
    # the oldest ones were evicted
    assert (await get_slice(seeded, "task:DESIGN_*", max_tokens=20))["cached"] is False
    assert await conn.fetchval("SELECT count(*) FROM sms.summary_cache") <= 200


async def test_an_older_read_never_replaces_a_newer_row(seeded, conn):
    stale = await conn.fetchval("SELECT sms.read_slice($1, $2, 'task:DESIGN_*', NULL, 'key', NULL, '')::text", T, F)
    await write(seeded, {"tasks.DESIGN_001.status": "REOPENED"})
    fresh = await conn.fetchval("SELECT sms.read_slice($1, $2, 'task:DESIGN_*', NULL, 'key', NULL, '')::text", T, F)
    await conn.execute("SELECT sms.store_slice_summary($1, $2, $3::jsonb, 'fresh')", T, F, fresh)
    await conn.execute("SELECT sms.store_slice_summary($1, $2, $3::jsonb, 'stale')", T, F, stale)
    row = await conn.fetchrow("SELECT version, summary FROM sms.summary_cache")
    assert (row["version"], row["summary"]) == (2, "fresh")
    hit = json.loads(
        await conn.fetchval("SELECT sms.read_slice($1, $2, 'task:DESIGN_*', NULL, 'key', NULL, '')::text", T, F)
    )
    assert hit["cached"] is True and hit["slice"]["tasks"]["DESIGN_001"]["status"] == "REOPENED"


# ---------------------------------------------------------------- concurrency


READS = [
    {"slice": "task:DESIGN_*", "k": 3},
    {"slice": "task:*", "order": "recent", "k": 2},
    {"slice": "tasks.*.status", "where": '@.status == "OPEN"'},
    {"slice": ["metric:*", "agent:*bot"]},
    {"slice": "phase"},
]
WRITERS, DELTAS_PER_WRITER, READERS = 5, 30, 4


def writer_delta(rng: random.Random, writer: int, i: int) -> dict[str, Any]:
    choice = rng.randrange(8)
    if choice == 0:
        return {f"tasks.DESIGN_00{rng.randrange(1, 4)}.status": rng.choice(["OPEN", "DONE", "IN_PROGRESS"])}
    if choice == 1:
        return {f"tasks.IMPLEMENT_00{rng.randrange(1, 3)}.estimate": {"$inc": 1}}
    if choice == 2:
        return {f"tasks.DESIGN_1{writer}{i:02d}": {"status": "OPEN", "by": writer}}
    if choice == 3:
        return {f"tasks.DESIGN_1{rng.randrange(WRITERS)}{rng.randrange(DELTAS_PER_WRITER):02d}": {"$unset": True}}
    if choice == 4:
        return {"metrics.ctr": {"$inc": 0.25}}
    if choice == 5:
        return {"resources.cash_balance_usd": {"$inc": 1}, "agents_online.human.status": "away"}
    if choice == 6:
        return {f"agents_online.Bot{writer}bot": {"status": rng.choice(["online", "idle"])}}
    return {"phase": rng.choice(["build", "ship", "test"])}


async def replay_expectations(conn, log: list[dict[str, Any]]) -> dict[tuple[int, int], dict[str, Any]]:
    """(read index, version) -> the slice read at that version, by replaying the log step by step
    into a scratch state (whose versions, and so the entries' versions, match the original's)."""
    expected: dict[tuple[int, int], dict[str, Any]] = {}

    async def record(version: int) -> None:
        for index, read in enumerate(READS):
            specs = read["slice"] if isinstance(read["slice"], list) else [read["slice"]]
            text = await conn.fetchval(
                "SELECT sms.read_slice_parts($1, 'scratch', sms.parse_slice($2), $3, $4, $5::jsonpath)::text",
                T,
                ",".join(specs),
                read.get("k"),
                read.get("order", "key"),
                f"$ ? ({read['where']})" if "where" in read else None,
            )
            expected[index, version] = exact(text)

    await record(0)
    for row in log:
        result = json.loads(
            await conn.fetchval(
                "SELECT sms.apply_delta($1, 'scratch', sms.ops_to_delta($2::text::jsonb))::text",
                T,
                json.dumps(row["ops"]),
            )
        )
        assert result["version"] == row["version"]
        await record(row["version"])
    return expected


async def test_concurrent_writers_and_readers_always_see_the_slice_of_their_version(live_url, conn):
    responses: list[tuple[int, dict[str, Any]]] = []
    done = asyncio.Event()

    async with httpx.AsyncClient(base_url=live_url, timeout=60) as http:
        response = await http.post(URL, json=SEED)
        assert response.status_code == 200

        async def writer(index: int) -> None:
            rng = random.Random(index)
            for i in range(DELTAS_PER_WRITER):
                answer = await http.post(f"{URL}/delta", json=writer_delta(rng, index, i))
                assert answer.status_code == 200, answer.text

        async def read_once(index: int) -> None:
            answer = await http.get(f"{URL}/slice", params=READS[index])
            assert answer.status_code == 200, answer.text
            responses.append((index, exact(answer.text)))

        async def reader(offset: int) -> None:
            turn = offset
            while not done.is_set():
                await read_once(turn % len(READS))
                turn += 1

        readers = [asyncio.create_task(reader(i)) for i in range(READERS)]
        try:
            await asyncio.gather(*(writer(i) for i in range(WRITERS)))
        finally:
            done.set()
            await asyncio.gather(*readers)
        for _ in range(2):  # once more after the last write: the second round is served from the cache
            for index in range(len(READS)):
                await read_once(index)

        final = exact((await http.get(URL)).text)
        log: list[dict[str, Any]] = []
        since = 0
        while True:
            page = (await http.get(f"{URL}/deltas", params={"since": since, "limit": 1000})).json()
            log += page["deltas"]
            since = page["deltas"][-1]["version"] if page["deltas"] else since
            if not page["more"]:
                break

    assert final["version"] == 1 + WRITERS * DELTAS_PER_WRITER
    assert [row["version"] for row in log] == list(range(1, final["version"] + 1))
    expected = await replay_expectations(conn, log)
    assert exact(await conn.fetchval("SELECT sms.document($1, 'scratch')::text", T)) == final["state"]

    assert len(responses) > len(READS) * 2
    assert any(body["cached"] for _, body in responses)
    assert any(not body["cached"] for _, body in responses)
    for index, body in responses:
        want = expected[index, body["version"]]
        context = (READS[index], body["version"], body["cached"])
        assert body["slice"] == want["slice"], context
        assert (body["total"], body["truncated"]) == (want["total"], want["truncated"]), context
        spec = ",".join(READS[index]["slice"]) if isinstance(READS[index]["slice"], list) else READS[index]["slice"]
        lines = body["summary"].splitlines()
        assert lines[0].startswith(f"State {T}/{F} v{body['version']} · slice {spec}: {want['total']} matched"), (
            context,
            lines[0],
        )
        present = {member for value in body["slice"].values() if isinstance(value, dict) for member in value}
        for member in entry_members(body["summary"]):
            assert member in present, (context, member, body["summary"])
        if "phase" in body["slice"]:
            assert f"phase = {body['slice']['phase']}" in body["summary"], context
