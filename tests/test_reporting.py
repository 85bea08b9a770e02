"""Reports over the log (DESIGN §1 "analysts with SQL reports on delta lineage", §8):

* the views sms.delta_lineage, sms.actor_activity and sms.path_history, on a generated workload of
  several tenants, states, actors and lineages, equal what is computed here from the rows of
  sms.deltas, their ops, and the documents read after each write;
* a lineage lookup (the view and GET /lineage/{id}) and a path's history (sms.path_changes) are
  index scans on a workload of a few thousand deltas (EXPLAIN after ANALYZE; auto_explain for
  the statements inside the plpgsql function);
* heartbeats (POST /agents/{t}/{f}/{agent}/heartbeat) and task comments (POST/GET /tasks/...),
  the original service's routes; the comments are append-only.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from helpers import (
    apply_delta,
    assert_problem,
    canonical,
    document,
    log_rows,
    logged_plans,
    one_server_plans,
    plan_nodes,
)

from app.db.queries import _READ_LINEAGE
from app.domain.delta import escape_key

MISSING = object()
REJECTED = {"SM001", "SM002", "SM004"}


def lookup(doc: Any, keys: list[str]) -> Any:
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return MISSING
        doc = doc[key]
    return doc


def dotted(keys: list[str]) -> str:
    return ".".join(escape_key(k) for k in keys)


async def state_version(conn: asyncpg.Connection, tenant: str, fsa: str) -> int:
    return await conn.fetchval(
        "SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0)", tenant, fsa
    )


# ---------------------------------------------------------------- a generated workload

STATES = [("t1", "alpha"), ("t1", "beta"), ("t2", "alpha")]
ACTORS = ["al", "bo", "cy", "team/DesignBot", None]
LINEAGES = ["L1", "L2", "L3", None]
MEMBERS = ["A", "B", "C", "c.d"]
KINDS = {
    "status": 6,
    "parent": 3,
    "inc": 3,
    "max": 3,
    "merge": 2,
    "unset": 2,
    "phase": 2,
    "collection": 1,
    "multi": 3,
    "heartbeat": 2,
    "rollback": 1,
    "replace": 1,
}


def make_delta(rng: random.Random, kind: str, actor: str | None) -> dict[str, Any]:
    member = escape_key(rng.choice(MEMBERS))
    if kind == "status":
        return {f"tasks.{member}.status": rng.choice(["OPEN", "DONE", "NEW"])}
    if kind == "parent":
        return {f"tasks.{member}": {"status": rng.choice(["OPEN", "DONE"]), "owner": actor or "nobody"}}
    if kind == "inc":
        return {"metrics.n": {"$inc": rng.randint(1, 3)}}
    if kind == "max":
        return {"metrics.peak": {"$max": rng.randint(0, 9)}}  # often lower than the peak: no change
    if kind == "merge":
        patch = {rng.choice(MEMBERS): rng.choice([None, {"status": "MERGED"}]) for _ in range(2)}
        return {"tasks": {"$merge": patch}}
    if kind == "unset":
        return {f"tasks.{member}.owner": {"$unset": True}}
    if kind == "phase":
        return {"phase": rng.choice(["design", "build", "ship"])}
    if kind == "collection":
        return {"tasks": {rng.choice(MEMBERS): {"status": "RESET"}}}
    return {  # multi
        f"tasks.{member}.status": rng.choice(["OPEN", "DONE"]),
        "metrics.n": {"$inc": 1},
        "tags": {"$add": [rng.choice("xyz")]},
    }


async def build_workload(conn: asyncpg.Connection, writes: int = 150, seed: int = 20240601) -> dict:
    """Random writes of every kind to STATES by ACTORS in LINEAGES, through SQL as a psql user
    would; returns {(tenant, fsa): {version: document after it}}."""
    rng = random.Random(seed)
    documents: dict[tuple[str, str], dict[int, Any]] = {state: {0: {}} for state in STATES}
    kinds, weights = list(KINDS), list(KINDS.values())
    for _ in range(writes):
        (tenant, fsa), actor, lineage = rng.choice(STATES), rng.choice(ACTORS), rng.choice(LINEAGES)
        kind = rng.choices(kinds, weights)[0]
        before = await state_version(conn, tenant, fsa)
        try:
            if kind == "heartbeat":
                agent = actor or "bot"
                await conn.execute("SELECT sms.heartbeat($1, $2, $3, $4)", tenant, fsa, agent, lineage)
            elif kind == "rollback":
                target = rng.randint(0, before)
                await conn.execute(
                    "SELECT sms.rollback($1, $2, $3, p_actor => $4, p_lineage_id => $5)",
                    tenant,
                    fsa,
                    target,
                    actor,
                    lineage,
                )
            elif kind == "replace":
                doc = {"phase": "reset", "tasks": {"A": {"status": "OPEN"}}, "metrics": {"n": 0}}
                await conn.execute(
                    "SELECT sms.replace_state($1, $2, $3::jsonb, p_actor => $4, p_lineage_id => $5)",
                    tenant,
                    fsa,
                    json.dumps(doc),
                    actor,
                    lineage,
                )
            else:
                await apply_delta(conn, make_delta(rng, kind, actor), tenant, fsa, p_actor=actor, p_lineage_id=lineage)
        except asyncpg.PostgresError as exc:
            assert exc.sqlstate in REJECTED, f"{kind}: {exc.sqlstate} {exc}"
        after = await state_version(conn, tenant, fsa)
        if after > before:
            documents[tenant, fsa][after] = await document(conn, tenant, fsa)
    return documents


async def archive_copy(conn: asyncpg.Connection) -> None:
    """Tenant t3: a copy of t1's log whose rows are spread over five hours two days ago (a log
    imported from elsewhere; the log takes INSERTs), so that hourly reports see several hours."""
    await conn.execute(
        """INSERT INTO sms.deltas (tenant_id, fsa_id, version, delta_id, actor, lineage_id, meta, ops, paths,
                                   collections, created_at)
           SELECT 't3', fsa_id, version, gen_random_uuid(), actor, lineage_id, meta, ops, paths, collections,
                  created_at - interval '2 days' - (version % 5) * interval '1 hour'
             FROM sms.deltas WHERE tenant_id = 't1'"""
    )


async def all_log_rows(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT tenant_id, fsa_id, version, actor, lineage_id, ops::text, paths, created_at FROM sms.deltas"
    )
    return [{**dict(row), "ops": json.loads(row["ops"])} for row in rows]


@pytest.fixture
async def workload(conn) -> dict:
    await conn.execute("SET TimeZone = 'UTC'")
    documents = await build_workload(conn)
    await archive_copy(conn)
    return documents


# ---------------------------------------------------------------- the views


async def test_the_workload_covers_what_the_views_group(workload, conn):
    rows = await all_log_rows(conn)
    assert len(rows) > 200
    assert {r["tenant_id"] for r in rows} == {"t1", "t2", "t3"}
    assert {r["actor"] for r in rows} == set(ACTORS) | {"bot"}
    assert {r["lineage_id"] for r in rows} == set(LINEAGES)
    hours = {r["created_at"].replace(minute=0, second=0, microsecond=0) for r in rows if r["tenant_id"] == "t3"}
    assert len(hours) >= 5
    ops = {op["op"] for r in rows for op in r["ops"]}
    assert ops >= {"set", "unset", "inc", "max", "merge", "add"}
    # every row's paths are its ops' paths, in order
    assert all(r["paths"] == [dotted(op["path"]) for op in r["ops"]] for r in rows)


async def test_delta_lineage_equals_a_computation_from_the_log(workload, conn):
    expected: dict[tuple[str, str], dict[str, Any]] = {}
    for row in await all_log_rows(conn):
        if row["lineage_id"] is None:
            continue
        empty = {"states": set(), "actors": set(), "deltas": set(), "times": [], "paths": set()}
        group = expected.setdefault((row["tenant_id"], row["lineage_id"]), empty)
        group["states"].add(row["fsa_id"])
        if row["actor"] is not None:
            group["actors"].add(row["actor"])
        group["deltas"].add((row["fsa_id"], row["version"]))
        group["times"].append(row["created_at"])
        group["paths"].update(dotted(op["path"]) for op in row["ops"])
    got = await conn.fetch("SELECT * FROM sms.delta_lineage")
    assert len(got) == len(expected) == 3 * 3  # L1..L3 in t1, t2 and t3
    for row in got:
        group = expected[row["tenant_id"], row["lineage_id"]]
        key = (row["tenant_id"], row["lineage_id"])
        for column in ("states", "actors", "paths"):
            assert row[column] is not None and len(row[column]) == len(set(row[column])), (key, column)
            assert set(row[column]) == group[column], (key, column)
        assert row["deltas"] == len(group["deltas"]), key
        assert (row["first_at"], row["last_at"]) == (min(group["times"]), max(group["times"])), key


async def test_actor_activity_equals_a_computation_from_the_log(workload, conn):
    expected: dict[tuple, dict[str, set]] = defaultdict(lambda: {"deltas": set(), "states": set(), "paths": set()})
    for row in await all_log_rows(conn):
        hour = row["created_at"].astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        group = expected[row["tenant_id"], row["actor"], hour]
        group["deltas"].add((row["fsa_id"], row["version"]))
        group["states"].add(row["fsa_id"])
        group["paths"].update((row["fsa_id"], dotted(op["path"])) for op in row["ops"])
    got = {
        (r["tenant_id"], r["actor"], r["hour"]): (r["deltas"], r["states"], r["paths"])
        for r in await conn.fetch("SELECT * FROM sms.actor_activity")
    }
    assert got == {key: (len(g["deltas"]), len(g["states"]), len(g["paths"])) for key, g in expected.items()}
    assert any(actor is None for _, actor, _ in got)  # anonymous writes have a row of their own
    assert len({hour for tenant, _, hour in got if tenant == "t3"}) >= 5


def path_history_rows(rows: list[dict[str, Any]], documents: dict) -> list[tuple]:
    """sms.path_history from the log and the documents: one row per op, with the value at the
    op's path in the document right after the delta (None when absent)."""
    out = []
    for row in rows:
        doc = documents[row["tenant_id"], row["fsa_id"]][row["version"]]
        for op in row["ops"]:
            value = lookup(doc, op["path"])
            out.append(
                (
                    row["tenant_id"],
                    row["fsa_id"],
                    row["version"],
                    row["created_at"],
                    row["actor"],
                    row["lineage_id"],
                    dotted(op["path"]),
                    "$" + op["op"],
                    None if value is MISSING else canonical(value),
                )
            )
    return sorted(out, key=repr)


async def fetch_path_history(conn: asyncpg.Connection, where: str = "tenant_id IN ('t1', 't2')") -> list[tuple]:
    rows = await conn.fetch(
        "SELECT tenant_id, fsa_id, version, created_at, actor, lineage_id, path, operator, new_value::text"
        f" FROM sms.path_history WHERE {where}"
    )
    return sorted(
        (
            (
                *tuple(r)[:8],
                None if r["new_value"] is None else canonical(json.loads(r["new_value"], parse_float=Decimal)),
            )
            for r in rows
        ),
        key=repr,
    )


def mismatches(got: list[tuple], expected: list[tuple]) -> str:
    extra = [row for row in got if row not in expected]
    missing = [row for row in expected if row not in got]
    return f"{len(extra)} rows differ; view: {extra[:4]}\nexpected: {missing[:4]}"


async def test_path_history_equals_the_values_after_each_delta(workload, conn):
    rows = [r for r in await all_log_rows(conn) if r["tenant_id"] in ("t1", "t2")]
    expected = path_history_rows(rows, workload)
    got = await fetch_path_history(conn)
    assert len(got) == len(expected) == sum(len(r["ops"]) for r in rows)
    assert got == expected, mismatches(got, expected)


async def path_history_case(conn: asyncpg.Connection, deltas: list[dict[str, Any]]) -> None:
    """Applies deltas to t/f and compares sms.path_history with the documents after each."""
    documents = {("t", "f"): {0: {}}}
    for delta in deltas:
        result = await apply_delta(conn, delta, p_actor="al")
        documents["t", "f"][result["version"]] = await document(conn)
    expected = path_history_rows(await all_log_rows(conn), documents)
    got = await fetch_path_history(conn, "tenant_id = 't'")
    assert got == expected, mismatches(got, expected)


async def test_path_history_new_value_when_the_op_left_the_value_as_it_was(conn):
    # $max below the current value, and a $set to the value it already has: the value is still there
    await path_history_case(
        conn, [{"metrics.peak": 5, "tasks.A.status": "OPEN"}, {"metrics.peak": {"$max": 2}, "tasks.A.status": "OPEN"}]
    )


async def test_path_history_new_value_of_a_merge_into_a_whole_collection(conn):
    await path_history_case(conn, [{"tasks.A.status": "OPEN"}, {"tasks": {"$merge": {"B": {"status": "NEW"}}}}])


async def test_path_history_new_value_of_an_old_write_to_a_whole_collection(conn):
    # the value right after version 1, not the collection as it is now
    await path_history_case(conn, [{"tasks": {"A": {"status": "OPEN"}}}, {"tasks.B.status": "NEW"}])


async def test_path_history_reads_values_as_value_at_does_across_snapshots_and_a_compaction(conn):
    """The view reads the history and the snapshots itself (a statement that reads a table may not
    call one that reads another on Citus): its values are sms.value_at's, also after a compaction
    and where an entry has no history, only snapshots."""
    await conn.execute("SET sms.snapshot_every = 3; SET sms.notify = off")
    for i in range(1, 201):
        delta = [
            {"tasks": {f"T{i % 5}": {"s": i}}},
            {f"tasks.T{i % 4}.s": i},
            {f"tasks.T{i % 6}": {"$unset": True}},
            {"phase": f"p{i}"},
            {"tasks": {"$merge": {f"M{i % 3}": i}}},
            {"metrics.n": {"$inc": 1}, "phase": {"x": i}},
            {f"tasks.T{i % 5}.s": {"$max": i % 10}},
        ][i % 7]
        await apply_delta(conn, delta, "t", f"f{i % 3}")
    await conn.execute("SELECT sms.compact('t', 'f1', 40, 'ops', NULL)")
    # f2's entries as if written before history was kept (revision 0004): read from its snapshots
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO sms.erasures (tenant_id, fsa_id, action, last_version, through_version)"
            " VALUES ('t', 'f2', 'compact', 67, 40)"
        )
        await conn.execute("DELETE FROM sms.entry_history WHERE tenant_id = 't' AND fsa_id = 'f2' AND version <= 40")
    ops = await conn.fetch(
        """SELECT d.fsa_id, d.version, k.keys, sms.format_path(k.keys) AS path, '$' || (o.op ->> 'op') AS operator
             FROM sms.deltas d
            CROSS JOIN LATERAL jsonb_array_elements(d.ops) o(op)
            CROSS JOIN LATERAL (SELECT array_agg(e ORDER BY i)
                                  FROM jsonb_array_elements_text(o.op -> 'path') WITH ORDINALITY p(e, i)) k(keys)"""
    )
    # value_at in statements of their own: on Citus one that reads sms.deltas may not call it
    expected = [
        (op["fsa_id"], op["version"], op["path"], op["operator"],
         await conn.fetchval("SELECT sms.value_at('t', $1, $2, $3)::text", op["fsa_id"], op["keys"], op["version"]))
        for op in ops
    ]  # fmt: skip
    got = await conn.fetch("SELECT fsa_id, version, path, operator, new_value::text FROM sms.path_history")
    assert len(expected) > 150 and await conn.fetchval("SELECT count(*) FROM sms.snapshots") > 50
    assert sorted(map(tuple, got), key=repr) == sorted(map(tuple, expected), key=repr)


# ---------------------------------------------------------------- lineage over HTTP


async def test_lineage_route_lists_a_lineage_across_states_in_time_order(client, conn):
    writes = [
        ("alpha", {"tasks.A.status": "OPEN"}, "al", "L1"),
        ("beta", {"tasks.B.status": "OPEN"}, "bo", "L1"),
        ("alpha", {"metrics.n": {"$inc": 1}}, "cy", "L2"),
        ("alpha", {"tasks.A.status": "DONE"}, "bo", "L1"),
        ("gamma", {"phase": "x"}, None, "L1"),
    ]
    for fsa, delta, actor, lineage in writes:
        await apply_delta(conn, delta, "t1", fsa, p_actor=actor, p_lineage_id=lineage)
    await apply_delta(conn, {"a": 1}, "t2", "alpha", p_actor="al", p_lineage_id="L1")  # another tenant
    response = await client.get("/lineage/L1", params={"tenant_id": "t1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["tenant_id"], body["lineage_id"]) == ("t1", "L1")
    log = [r for r in await all_log_rows(conn) if r["tenant_id"] == "t1" and r["lineage_id"] == "L1"]
    log.sort(key=lambda r: (r["created_at"], r["fsa_id"], r["version"]))
    assert [(d["fsa_id"], d["version"], d["actor"]) for d in body["deltas"]] == [
        (r["fsa_id"], r["version"], r["actor"]) for r in log
    ]
    assert len(body["deltas"]) == 4
    assert [d["paths"] for d in body["deltas"]] == [r["paths"] for r in log]
    limited = (await client.get("/lineage/L1", params={"tenant_id": "t1", "limit": 2})).json()["deltas"]
    assert limited == body["deltas"][:2]
    assert (await client.get("/lineage/nope", params={"tenant_id": "t1"})).json()["deltas"] == []


# ---------------------------------------------------------------- indexes


INDEX_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}
LOGS = {"deltas", "entry_history"}


def seq_scans_on_logs(plan: dict[str, Any]) -> list[str]:
    return [
        n["Relation Name"]
        for n in plan_nodes(plan)
        if n["Node Type"].endswith("Seq Scan") and n.get("Relation Name") in LOGS
    ]


def index_scans(plan: dict[str, Any], index: str) -> list[dict[str, Any]]:
    return [n for n in plan_nodes(plan) if n["Node Type"] in INDEX_SCANS and n.get("Index Name") == index]


async def explain(conn: asyncpg.Connection, query: str, *args: Any) -> dict[str, Any]:
    one_server_plans()
    return json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + query, *args))[0]["Plan"]


@pytest.fixture
async def big_log(conn) -> asyncpg.Connection:
    """3000 deltas over 2 tenants x 4 states, 7 actors, 150 lineages, 300 tasks; then ANALYZE."""
    await conn.execute("SET sms.notify = off")
    await conn.execute(
        """SELECT sms.apply_delta('t' || (i % 2), 'f' || (i % 4),
                                  jsonb_build_object('tasks.T' || (i % 300) || '.status', 's' || i,
                                                     'metrics.n', jsonb_build_object('$inc', 1)),
                                  p_actor => 'a' || (i % 7), p_lineage_id => 'L' || (i % 150))
             FROM generate_series(1, 3000) i"""
    )
    await conn.execute("ANALYZE sms.deltas; ANALYZE sms.entry_history; ANALYZE sms.entries")
    assert await conn.fetchval("SELECT count(*) FROM sms.deltas") == 3000
    return conn


async def test_a_seq_scan_on_the_log_is_seen_when_there_is_one(big_log):
    """The checks below can fail: a query no index serves is reported."""
    plan = await explain(big_log, "SELECT * FROM sms.deltas WHERE actor = $1", "a1")
    assert seq_scans_on_logs(plan) == ["deltas"]


async def test_a_lineage_lookup_in_the_view_is_an_index_scan(big_log):
    plan = await explain(
        big_log, "SELECT * FROM sms.delta_lineage WHERE tenant_id = $1 AND lineage_id = $2", "t1", "L7"
    )
    assert seq_scans_on_logs(plan) == [], json.dumps(plan, indent=1)
    scans = index_scans(plan, "deltas_by_lineage")
    assert scans, json.dumps(plan, indent=1)
    assert all("tenant_id" in s["Index Cond"] and "lineage_id" in s["Index Cond"] for s in scans)
    row = await big_log.fetchrow("SELECT * FROM sms.delta_lineage WHERE tenant_id = 't1' AND lineage_id = 'L7'")
    assert row["deltas"] == 20  # i % 150 = 7 (odd i: tenant t1) for 20 values of i


async def test_the_lineage_route_query_is_an_index_scan(big_log):
    plan = await explain(big_log, _READ_LINEAGE, "t0", "L8", 1000, ["t0"])  # acting for the tenant, as the service
    assert seq_scans_on_logs(plan) == [], json.dumps(plan, indent=1)
    scans = index_scans(plan, "deltas_by_lineage")
    assert scans and all("lineage_id" in s["Index Cond"] for s in scans), json.dumps(plan, indent=1)


@pytest.mark.parametrize("path", ["tasks.T5.status", "tasks.T17"])
async def test_a_paths_history_is_an_index_scan(big_log, path):
    plans = await logged_plans(big_log, "SELECT * FROM sms.path_changes($1, $2, $3)", "t1", "f1", path)
    reading = [p for p in plans if "entry_history" in p["Query Text"]]
    assert reading, [p["Query Text"][:80] for p in plans]
    for p in plans:
        assert seq_scans_on_logs(p["Plan"]) == [], json.dumps(p, indent=1)
    scans = [s for p in reading for s in index_scans(p["Plan"], "entry_history_pkey")]
    assert scans, json.dumps(reading, indent=1)
    assert any("collection" in s["Index Cond"] and "member" in s["Index Cond"] for s in scans), scans
    # and it answered: tasks.T5 (T17) of t1/f1 is written by i = 5 (17) mod 300, 10 times, each a change
    rows = await big_log.fetch("SELECT * FROM sms.path_changes($1, $2, $3)", "t1", "f1", path)
    assert len(rows) == 10


# ---------------------------------------------------------------- heartbeats


def parse_time(value: str) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0)
    return parsed


async def logged_heartbeats(conn: asyncpg.Connection, agent: str) -> list[str]:
    return [
        op["value"]
        for row in await log_rows(conn)
        for op in row["ops"]
        if op["path"] == ["agents_online", agent] and op["op"] == "max"
    ]


async def test_a_heartbeat_records_the_latest_time_and_never_moves_it_back(client, conn):
    agent = "team/DesignBot"
    url = f"/agents/t/f/{agent}/heartbeat"
    response = await client.post(url, params={"lineage_id": "hb-1"})
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True and response.json()["version"] == 1
    row = (await log_rows(conn))[-1]
    assert (row["actor"], row["lineage_id"], row["meta"]) == (agent, "hb-1", {"heartbeat": True})
    first = (await document(conn))["agents_online"][agent]
    parse_time(first)
    # as the original answered: the agent, and the time recorded
    assert (response.json()["agent"], response.json()["timestamp"]) == (agent, first)

    assert (await client.post(url)).status_code == 200
    second = (await document(conn))["agents_online"][agent]
    assert parse_time(second) >= parse_time(first)

    # a late heartbeat (sent an hour earlier, arriving now) does not move it back ...
    await conn.execute(
        "SELECT sms.heartbeat('t', 'f', $1, NULL, $2::timestamptz - interval '1 hour')", agent, parse_time(second)
    )
    assert (await document(conn))["agents_online"][agent] == second
    # ... a newer one moves it forward
    await conn.execute(
        "SELECT sms.heartbeat('t', 'f', $1, NULL, $2::timestamptz + interval '1 hour')", agent, parse_time(second)
    )
    latest = (await document(conn))["agents_online"][agent]
    assert parse_time(latest) == parse_time(second) + timedelta(hours=1)

    # the recorded time is the latest of all the times logged for the agent
    logged = await logged_heartbeats(conn, agent)
    assert len(logged) == 4
    assert latest == max(logged, key=parse_time)

    # agents are separate keys; "/" and "." in names are kept as they are
    for other in ("DesignBot", "qa.bot"):
        assert (await client.post(f"/agents/t/f/{other}/heartbeat")).status_code == 200
    online = (await document(conn))["agents_online"]
    assert set(online) == {agent, "DesignBot", "qa.bot"} and online[agent] == latest
    found = (await client.get("/state/t/f/slice", params={"slice": "agent:*bot"})).json()["slice"]
    assert set(found["agents_online"]) == {agent, "DesignBot", "qa.bot"}


async def test_heartbeat_urls_that_are_not_heartbeats_are_404(client, conn):
    for url in ("/agents/t/f/bot", "/agents/t/f/bot/ping", "/agents/t/f/heartbeat"):
        assert_problem(await client.post(url), 404, "not-found")
    assert await conn.fetchval("SELECT count(*) FROM sms.deltas") == 0


async def test_a_heartbeat_keeps_the_cached_summary_of_another_collection(client):
    await client.post("/state/t/f/delta", json={"tasks.A.status": "OPEN", "tasks.B.status": "DONE"})
    first = (await client.get("/state/t/f/slice", params={"slice": "task:*"})).json()
    assert first["cached"] is False
    assert (await client.post("/agents/t/f/team/DesignBot/heartbeat")).status_code == 200
    second = (await client.get("/state/t/f/slice", params={"slice": "task:*"})).json()
    assert (second["cached"], second["version"], second["slice"]) == (True, 2, first["slice"])
    # while a write to the tasks is a miss
    await client.post("/state/t/f/delta", json={"tasks.A.status": "DONE"})
    third = (await client.get("/state/t/f/slice", params={"slice": "task:*"})).json()
    assert (third["cached"], third["slice"]["tasks"]["A"]) == (False, {"status": "DONE"})


# ---------------------------------------------------------------- task comments


async def comment_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM sms.task_comments ORDER BY comment_id")


async def test_comments_by_query_parameters_and_json_newest_first(client, conn):
    await client.post("/state/t/f/delta", json={"tasks.T1.status": "OPEN", "tasks.T2.status": "OPEN"})
    url = "/tasks/t/f/T1/comment"
    first = await client.post(
        url, params={"author": "al", "body": "**Blocked** on `T2`", "is_blocker": "true", "lineage_id": "L1"}
    )
    assert first.status_code == 200, first.text
    stored = first.json()
    assert {k: stored[k] for k in ("success", "task_id", "author", "body", "body_md", "is_blocker", "lineage_id")} == {
        "success": True,
        "task_id": "T1",
        "author": "al",
        "body": "**Blocked** on `T2`",
        "body_md": "**Blocked** on `T2`",
        "is_blocker": True,
        "lineage_id": "L1",
    }
    assert isinstance(stored["comment_id"], int)
    markdown = "# Review\n\n- looks good\n- one *nit*"
    second = await client.post(url, json={"author": "bo", "body": markdown, "is_blocker": False, "lineage_id": "L2"})
    assert second.status_code == 200, second.text
    third = await client.post(url, params={"author": "cy"}, json={"body": "ok", "is_blocker": "false"})
    assert third.status_code == 200, third.text
    assert (await client.post("/tasks/t/f/T2/comment", json={"author": "al", "body": "elsewhere"})).status_code == 200

    rows = await comment_rows(conn)
    assert [(r["task_id"], r["author"], r["body"], r["is_blocker"], r["lineage_id"]) for r in rows] == [
        ("T1", "al", "**Blocked** on `T2`", True, "L1"),
        ("T1", "bo", markdown, False, "L2"),
        ("T1", "cy", "ok", False, None),
        ("T2", "al", "elsewhere", False, None),
    ]

    async def comments(task: str, **params: int) -> list[dict]:
        answer = (await client.get(f"/tasks/t/f/{task}/comments", params=params)).json()
        assert {k: answer[k] for k in ("tenant_id", "fsa_id", "task_id")} == {
            "tenant_id": "t",
            "fsa_id": "f",
            "task_id": task,
        }
        return answer["comments"]

    listed = await comments("T1")
    assert [c["comment_id"] for c in listed] == [r["comment_id"] for r in reversed(rows[:3])]
    assert [c["author"] for c in listed] == ["cy", "bo", "al"]
    assert listed[2]["body"] == listed[2]["body_md"] == "**Blocked** on `T2`" and listed[2]["is_blocker"] is True
    assert await comments("T1", limit=2) == listed[:2]
    assert [c["body"] for c in await comments("T2")] == ["elsewhere"]
    assert await comments("T3") == []
    # comments are not deltas: the state did not move
    assert (await client.get("/state/t/f")).json()["version"] == 1


async def test_concurrent_comments_take_each_id_of_their_state_once(database_url, conn):
    """A comment's id is one more than its state's last: 100 comments from 20 connections at once,
    on two tasks of one state, take 1..100; another state counts from 1 on its own."""
    await apply_delta(conn, {"tasks.T1.status": "OPEN", "tasks.T2.status": "OPEN"})
    await apply_delta(conn, {"tasks.T1.status": "OPEN"}, fsa="g")
    async with asyncpg.create_pool(database_url, min_size=20, max_size=20) as pool:

        async def comment(i: int, fsa: str = "f") -> int:
            task = f"T{i % 2 + 1}" if fsa == "f" else "T1"
            return await pool.fetchval(
                "SELECT (sms.add_comment('t', $1, $2, $3, 'lgtm') ->> 'comment_id')::bigint", fsa, task, f"a{i}"
            )

        ids = await asyncio.gather(*(comment(i) for i in range(100)))
        assert sorted(ids) == list(range(1, 101))
        assert [await comment(0, "g"), await comment(1, "g")] == [1, 2]
    assert await conn.fetchval("SELECT count(DISTINCT comment_id) FROM sms.task_comments WHERE fsa_id = 'f'") == 100


async def test_a_comment_does_not_wait_for_the_deltas_in_flight(database_url, conn):
    """A comment counts its id apart from the state's header row, which each write of a delta
    updates: it is taken while a transaction that applied a delta to the state is still open
    (it used to wait for that transaction to end, and the state's next deltas for the comment)."""
    await apply_delta(conn, {"tasks.T1.status": "OPEN"})
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await writer.fetchval("""SELECT sms.apply_delta('t', 'f', '{"tasks.T1.status": "DONE"}')""")
            async with conn.transaction():
                await conn.execute("SET LOCAL lock_timeout = '2s'")  # a wait would fail it, not hang it
                made = await conn.fetchval(
                    "SELECT (sms.add_comment('t', 'f', 'T1', 'ann', 'on it') ->> 'comment_id')::bigint"
                )
        assert made == 1
    finally:
        await writer.close()
    assert (await log_rows(conn))[-1]["version"] == 2


async def test_a_comment_on_a_task_that_does_not_exist_is_a_404_and_stores_nothing(client, conn):
    await client.post("/state/t/f/delta", json={"tasks.T1.status": "OPEN", "tasks.T2.status": "OPEN"})
    assert (await client.post("/tasks/t/f/T1/comment", params={"author": "al", "body": "x"})).status_code == 200
    await client.post("/state/t/f/delta", json={"tasks.T2": {"$unset": True}})
    before = await comment_rows(conn)
    for url, kwargs in [
        ("/tasks/t/f/T9/comment", {"params": {"author": "al", "body": "x"}}),
        ("/tasks/t/f/T9/comment", {"json": {"author": "al", "body": "x", "is_blocker": True}}),
        ("/tasks/t/f/T2/comment", {"params": {"author": "al", "body": "removed task"}}),
        ("/tasks/t/other/T1/comment", {"params": {"author": "al", "body": "other state"}}),
    ]:
        body = assert_problem(await client.post(url, **kwargs), 404, "not-found")
        assert url.split("/")[4] in body["detail"]
    assert await comment_rows(conn) == before
    assert await conn.fetchval("SELECT count(*) FROM sms.task_comments") == 1


async def test_task_comments_are_append_only(client, conn):
    await client.post("/state/t/f/delta", json={"tasks.T1.status": "OPEN"})
    for n in range(2):
        assert (await client.post("/tasks/t/f/T1/comment", params={"author": "al", "body": f"c{n}"})).status_code == 200
    before = await comment_rows(conn)
    for statement in (
        "UPDATE sms.task_comments SET body = 'forged'",
        "UPDATE sms.task_comments SET is_blocker = true WHERE body = 'c0'",
        "DELETE FROM sms.task_comments WHERE body = 'c1'",
        "TRUNCATE sms.task_comments",
    ):
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.execute(statement)
        assert raised.value.sqlstate == "SM008", statement
    assert await comment_rows(conn) == before
