"""History (DESIGN §3, §8): time travel, diffs, rollback, a path's history and "what changed since".

* the state at every version (sms.document_at, sms.value_at, GET /state/{t}/{f}?version=N) is
  exactly the state a replay of the log reaches at that version (hypothesis, with snapshots taken
  every 1, 3 and 7 versions so that snapshots and the history overlaid on them are both read);
* GET …/diff?from=&to= is a JSON Patch from the state at `from` to the state at `to`;
* POST …/rollback restores an old version's content as a new logged delta with its NOTIFY;
* GET …/history?path= says who changed a path, when, from what to what, newest first;
* GET …/changes?since=N (sms.changes_since / sms.changes_digest) names each changed path once,
  old (at N) -> new (now), within its token budget, and only inside the slice when one is given;
* sms.entry_history is append-only.

The expectations are computed independently: from the documents read after each write and from
the log's rows, never from the functions under test.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from fnmatch import fnmatchcase
from typing import Any

import asyncpg
import jsonpatch
import psycopg
import pytest
from helpers import ON_CITUS, assert_problem, canonical, listening, log_rows
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.domain.delta import escape_key
from app.domain.tokens import estimate

URL = "/state/t/f"
MISSING = object()
# SQLSTATEs of a write refused as it should be: invalid, type mismatch, $expect failed
REJECTED = {"SM001", "SM002", "SM004"}


# ---------------------------------------------------------------- independent helpers


def decode(text: str | None) -> Any:
    return None if text is None else json.loads(text, parse_float=Decimal)


def lookup(doc: Any, keys: list[str] | tuple[str, ...]) -> Any:
    """The value at a path of object keys, or MISSING (arrays are not addressed by path)."""
    for key in keys:
        if not isinstance(doc, dict) or key not in doc:
            return MISSING
        doc = doc[key]
    return doc


def dotted(keys: list[str] | tuple[str, ...]) -> str:
    return ".".join(escape_key(k) for k in keys)


def jsonb_text(value: Any) -> str:
    """A JSON value as PostgreSQL prints jsonb (keys by length, then bytes; ", " and ": ")."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {jsonb_text(value[k])}" for k in keys) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def brief(value: Any) -> str:
    text = jsonb_text(value)
    return text if len(text) <= 60 else text[:59] + "…"


async def write(client, delta: Any, actor: str | None = None, lineage: str | None = None, url: str = URL) -> dict:
    params = {k: v for k, v in {"actor": actor, "lineage_id": lineage}.items() if v is not None}
    response = await client.post(f"{url}/delta", json=delta, params=params)
    assert response.status_code == 200, response.text
    return response.json()


async def current(client, url: str = URL) -> tuple[int, Any]:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    body = response.json()
    return body["version"], body["state"]


# ---------------------------------------------------------------- time travel: property


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        if ON_CITUS:
            # a delegated call runs in a session of the tenant's node: a SET LOCAL reaches it, as the
            # service's act_for does, a session's SET does not
            connection.execute("SET citus.propagate_set_commands = 'local'")
        yield connection


members = st.sampled_from(["A", "B", "c.d"])
fields = st.sampled_from(["status", "n"])
leaf_values = st.integers(-3, 3) | st.sampled_from(["x", "y", ""]) | st.none() | st.booleans()
values = st.one_of(
    leaf_values,
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(fields, leaf_values, max_size=2),
    st.dictionaries(members, st.dictionaries(fields, leaf_values, max_size=2), max_size=2),
)
path_keys = st.one_of(
    st.tuples(st.just("tasks")),
    st.tuples(st.just("tasks"), members),
    st.tuples(st.just("tasks"), members, fields),
    st.tuples(st.just("phase")),
    st.tuples(st.just("metrics"), st.sampled_from(["n", "peak"])),
)
operations = st.one_of(
    values,
    st.just({"$unset": True}),
    st.builds(lambda n: {"$inc": n}, st.integers(-3, 3)),
    st.builds(lambda n: {"$max": n}, st.integers(-3, 3)),
    st.builds(lambda patch: {"$merge": patch}, st.dictionaries(members | fields, st.none() | values, max_size=2)),
    st.builds(lambda v: {"$add": [v]}, st.integers(0, 3)),
    st.builds(lambda v: {"$push": v}, st.integers(0, 3)),
)


@st.composite
def deltas(draw) -> dict[str, Any]:
    chosen = draw(st.lists(path_keys, min_size=1, max_size=3, unique=True))
    return {dotted(keys): draw(operations) for keys in chosen}


actors = st.sampled_from(["al", "bo", None])
steps = st.lists(
    st.one_of(
        st.tuples(st.just("delta"), deltas(), actors),
        st.tuples(st.just("delta"), deltas(), actors),
        st.tuples(st.just("delta"), deltas(), actors),
        st.tuples(st.just("replace"), st.dictionaries(st.sampled_from(["tasks", "phase", "metrics"]), values), actors),
        st.tuples(st.just("rollback"), st.floats(0, 1), actors),
    ),
    min_size=2,
    max_size=20,
)
PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def state_version(pg: psycopg.Connection, tenant: str, fsa: str) -> int:
    row = pg.execute("SELECT version FROM sms.states WHERE tenant_id = %s AND fsa_id = %s", (tenant, fsa)).fetchone()
    return row[0] if row else 0


def sql_document(pg: psycopg.Connection, tenant: str, fsa: str) -> Any:
    return decode(pg.execute("SELECT sms.document(%s, %s)::text", (tenant, fsa)).fetchone()[0])


def apply_step(
    pg: psycopg.Connection, tenant: str, fsa: str, kind: str, body: Any, actor: str | None, every: int
) -> bool:
    """One write through SQL, a snapshot every `every` versions; False when it was refused for one
    of the expected reasons."""
    try:
        with pg.transaction():
            pg.execute(f"SET LOCAL sms.snapshot_every = {int(every)}")
            sql_write(pg, tenant, fsa, kind, body, actor)
    except psycopg.Error as exc:
        assert exc.sqlstate in REJECTED, f"{exc.sqlstate}: {exc}"
        return False
    return True


def sql_write(pg: psycopg.Connection, tenant: str, fsa: str, kind: str, body: Any, actor: str | None) -> None:
    if kind == "delta":
        pg.execute("SELECT sms.apply_delta(%s, %s, %s::jsonb, p_actor => %s)", (tenant, fsa, json.dumps(body), actor))
    elif kind == "replace":
        pg.execute("SELECT sms.replace_state(%s, %s, %s::jsonb, p_actor => %s)", (tenant, fsa, json.dumps(body), actor))
    else:
        target = int(body * state_version(pg, tenant, fsa))
        pg.execute("SELECT sms.rollback(%s, %s, %s, p_actor => %s)", (tenant, fsa, target, actor))


@pytest.mark.parametrize("every", [1, 3, 7])
@PROPERTY_SETTINGS
@given(steps=steps)
def test_the_state_at_every_version_is_the_replay_of_the_log_up_to_it(pg, every, steps):
    tenant, fsa = "tt", uuid.uuid4().hex
    written = {0: {}}  # version -> the document read right after the write
    for kind, body, actor in steps:
        before = state_version(pg, tenant, fsa)
        applied = apply_step(pg, tenant, fsa, kind, body, actor, every)
        now = state_version(pg, tenant, fsa)
        event(f"{kind} {'applied' if applied and now > before else 'not logged'}")
        if now > before:
            assert now == before + 1
            written[now] = sql_document(pg, tenant, fsa)
    final = max(written)

    # the oracle: replay the logged ops, version by version, into a state of its own
    replayed = {0: {}}
    replay = "replay-" + fsa
    rows = pg.execute(
        "SELECT version, ops::text FROM sms.deltas WHERE tenant_id = %s AND fsa_id = %s ORDER BY version",
        (tenant, fsa),
    ).fetchall()
    assert [v for v, _ in rows] == list(range(1, final + 1))
    for v, ops in rows:
        pg.execute("SELECT sms.apply_ops(%s, %s, %s::jsonb)", (tenant, replay, ops))
        replayed[v] = sql_document(pg, tenant, replay)
        assert canonical(replayed[v]) == canonical(written[v]), f"replay differs at version {v}"

    # snapshots were taken where they should be, so both code paths are read below
    snapshots = pg.execute(
        "SELECT coalesce(array_agg(version ORDER BY version), '{}') FROM sms.snapshots"
        " WHERE tenant_id = %s AND fsa_id = %s",
        (tenant, fsa),
    ).fetchone()[0]
    assert snapshots == [v for v in range(1, final + 1) if v % every == 0]
    event(f"snapshots taken: {bool(snapshots)}; versions past the last one: {final > max(snapshots, default=0)}")

    # time travel: the whole document at every version
    at = dict(
        pg.execute(
            "SELECT v, sms.document_at(%s, %s, v)::text FROM generate_series(0, %s) v", (tenant, fsa, final)
        ).fetchall()
    )
    for v in range(final + 1):
        assert canonical(decode(at[v])) == canonical(replayed[v]), f"document_at version {v} (every {every})"

    # and every path the log names, at every version (sms.value_at, which the digests read)
    paths = sorted({tuple(op["path"]) for _, ops in rows for op in json.loads(ops)})
    if paths:
        found = pg.execute(
            """SELECT v, p.ordinality, sms.value_at(%s, %s, ARRAY(SELECT jsonb_array_elements_text(p.keys)), v)::text
                 FROM generate_series(0, %s) v, jsonb_array_elements(%s::jsonb) WITH ORDINALITY p(keys, ordinality)""",
            (tenant, fsa, final, json.dumps(paths)),
        ).fetchall()
        for v, n, text in found:
            keys = paths[n - 1]
            expected = lookup(replayed[v], keys)
            got = MISSING if text is None else decode(text)
            assert (got is MISSING) == (expected is MISSING), f"value_at {keys} version {v}: {text}"
            if got is not MISSING:
                assert canonical(got) == canonical(expected), f"value_at {keys} version {v}"

    # versions the state never had
    for missing in (final + 1, final + 50, -1):
        with pytest.raises(psycopg.Error) as raised:
            pg.execute("SELECT sms.document_at(%s, %s, %s)", (tenant, fsa, missing))
        assert raised.value.sqlstate == "SM010"


# ---------------------------------------------------------------- time travel over HTTP

WORKLOAD = [
    ({"tasks.A.status": "OPEN", "metrics.n": {"$inc": 1}, "phase": "design"}, "al", "L1"),
    ({"tasks.B": {"status": "OPEN", "owner": "bo"}}, "bo", "L2"),
    ({"tasks.A.status": "DONE", "metrics.n": {"$inc": 2}}, "al", "L1"),
    ({"tasks": {"$merge": {"B": None, "C": {"status": "NEW"}}}}, "cy", None),
    ({"phase": {"$unset": True}, "tasks.A.owner": "al"}, "al", "L1"),
    ({"metrics": {"n": 10, "peak": 3}}, "bo", "L2"),
    ({"tasks.C.status": "OPEN", "tags": {"$add": ["x", "y"]}}, "cy", "L3"),
    ({"metrics.peak": {"$max": 7}, "tasks.c\\.d": {"status": "OPEN"}}, "bo", "L2"),
    ({"tasks": "archived"}, "al", "L1"),
    ({"tasks": {"D": {"status": "NEW"}}, "tags": {"$remove": ["x"]}}, "cy", "L3"),
    ({"tasks.D.status": "DONE", "phase": "ship"}, "al", None),
    ({"agents_online.team/Design~Bot": {"$max": "2024-01-01T00:00:00Z"}, "a/b": {"~0": 1}}, "Design~Bot", None),
]


async def run_workload(client, url: str = URL) -> dict[int, Any]:
    """WORKLOAD through the API; the document after each version (0: {})."""
    states = {0: {}}
    for delta, actor, lineage in WORKLOAD:
        result = await write(client, delta, actor, lineage, url=url)
        v, state = await current(client, url)
        assert v == result["version"] == max(states) + 1
        states[v] = state
    return states


async def test_get_state_at_a_version_over_http(make_client):
    async with make_client(snapshot_every=3) as client:
        states = await run_workload(client)
        final = max(states)
        for v, expected in states.items():
            response = await client.get(URL, params={"version": v})
            assert response.status_code == 200, response.text
            assert response.json() == {"tenant_id": "t", "fsa_id": "f", "version": v, "state": expected}, v
            assert response.headers["etag"] == f'"{v}"'
        # later writes never change what an old version reads
        await write(client, {"tasks": {"$unset": True}, "phase": "later"}, "al")
        for v in (1, 4, final):
            assert (await client.get(URL, params={"version": v})).json()["state"] == states[v]


async def test_a_version_that_does_not_exist_is_a_404_problem(client):
    await run_workload(client)
    for v in (len(WORKLOAD) + 1, 2**40):
        body = assert_problem(await client.get(URL, params={"version": v}), 404, "not-found")
        assert str(v) in body["detail"]
    assert_problem(await client.get(URL, params={"version": -1}), 400, "malformed-request")
    # a state never written has version 0 only
    empty = await client.get("/state/t/never", params={"version": 0})
    assert (empty.status_code, empty.json()["state"]) == (200, {})
    assert_problem(await client.get("/state/t/never", params={"version": 1}), 404, "not-found")


# ---------------------------------------------------------------- diff


async def test_diff_patches_the_state_at_from_into_the_state_at_to(client):
    states = await run_workload(client)
    final = max(states)
    pairs = [
        (0, final),
        (1, 2),
        (2, 5),
        (5, 2),
        (final, 0),
        (3, 3),
        (4, 9),
        (9, 4),
        (6, 10),
        (8, 10),
        (10, 8),
        (10, 12),
    ]
    for old, new in pairs:
        response = await client.get(f"{URL}/diff", params={"from": old, "to": new})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["from"], body["to"]) == (old, new)
        assert jsonpatch.apply_patch(states[old], body["patch"]) == states[new], (old, new, body["patch"])
        if states[old] == states[new]:
            assert body["patch"] == []
    # `to` defaults to the current version
    for old in (0, 4, final):
        body = (await client.get(f"{URL}/diff", params={"from": old})).json()
        assert body["to"] == final
        assert jsonpatch.apply_patch(states[old], body["patch"]) == states[final]
    assert_problem(await client.get(f"{URL}/diff", params={"from": final + 1}), 404, "not-found")
    assert_problem(await client.get(f"{URL}/diff", params={"from": 0, "to": final + 1}), 404, "not-found")


# ---------------------------------------------------------------- rollback


async def test_rollback_restores_a_version_as_a_logged_delta_with_its_notify(client, conn, database_url):
    states = await run_workload(client)
    final = max(states)
    async with listening(database_url) as feed:
        response = await client.post(
            f"{URL}/rollback", params={"to_version": 3, "actor": "ops", "lineage_id": "undo-1", "ticket": "42"}
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["success"] is True and result["version"] == final + 1
        heard = await feed.next()
        assert (heard["tenant_id"], heard["fsa_id"], heard["version"]) == ("t", "f", final + 1)
        assert (heard["actor"], heard["lineage_id"], heard["delta_id"]) == ("ops", "undo-1", result["delta_id"])
        await feed.assert_silent()

    assert await current(client) == (final + 1, states[3])
    row = (await log_rows(conn))[-1]
    assert (row["version"], row["actor"], row["lineage_id"], row["delta_id"]) == (
        final + 1,
        "ops",
        "undo-1",
        result["delta_id"],
    )
    assert row["meta"]["rollback_to"] == 3 and row["meta"]["ticket"] == "42"
    # the log stays append-only: every earlier version still reads as it was
    for v, expected in states.items():
        assert (await client.get(URL, params={"version": v})).json()["state"] == expected

    # to 0: back to {}, again a logged delta
    response = await client.post(f"{URL}/rollback", params={"to_version": 0, "actor": "ops"})
    assert response.status_code == 200, response.text
    assert await current(client) == (final + 2, {})
    assert (await log_rows(conn))[-1]["meta"]["rollback_to"] == 0


async def test_a_rollback_to_a_version_that_does_not_exist_changes_nothing(client, conn, database_url):
    states = await run_workload(client)
    final = max(states)
    async with listening(database_url) as feed:
        body = assert_problem(
            await client.post(f"{URL}/rollback", params={"to_version": final + 1, "actor": "ops"}), 404, "not-found"
        )
        assert str(final + 1) in body["detail"]
        await feed.assert_silent()
    assert await current(client) == (final, states[final])
    assert len(await log_rows(conn)) == final


# ---------------------------------------------------------------- a path's history


async def test_history_of_a_path_says_who_changed_it_from_what_to_what_newest_first(client, conn):
    steps = [
        ("delta", {"tasks.A.status": "OPEN", "tasks.A.owner": "al"}, "al", "L1"),
        ("delta", {"tasks.A.owner": "bo"}, "bo", "L2"),  # a sibling: not a change of the path
        ("delta", {"tasks.A": {"status": "DONE", "owner": "cy"}}, "cy", None),  # a parent object set
        ("delta", {"tasks": {"$merge": {"A": {"status": "REOPENED"}}}}, "al", "L1"),  # the collection merged
        ("delta", {"tasks.A.status": "REOPENED"}, "bo", "L2"),  # the same value again: no change
        ("delta", {"tasks.A.status": {"$unset": True}}, "cy", "L3"),
        ("replace", {"tasks": {"A": {"status": "NEW"}}, "phase": "p"}, "al", "L1"),  # the whole state
        ("delta", {"tasks": {"$unset": True}}, "bo", None),
        ("delta", {"tasks": "archived"}, "cy", "L3"),
        ("delta", {"tasks": {"A": {"status": "BACK"}, "B": {}}}, "al", None),  # the whole collection set
        ("delta", {"tasks.B.status": "OPEN"}, "bo", "L2"),
    ]
    states = {0: {}}
    for kind, body, actor, lineage in steps:
        if kind == "replace":
            response = await client.post(URL, json=body, params={"actor": actor, "lineage_id": lineage})
            assert response.status_code == 200, response.text
        else:
            await write(client, body, actor, lineage)
        v, state = await current(client)
        states[v] = state
    log = {row["version"]: row for row in await log_rows(conn)}

    for path, keys in [("tasks.A.status", ["tasks", "A", "status"]), ("tasks.A", ["tasks", "A"]), ("phase", ["phase"])]:
        expected = []
        for v in sorted(states, reverse=True):
            if v == 0:
                continue
            old, new = lookup(states[v - 1], keys), lookup(states[v], keys)
            if (old is MISSING and new is MISSING) or (old is not MISSING and new is not MISSING and old == new):
                continue
            change = {"version": v, "path": path, "actor": log[v]["actor"], "lineage_id": log[v]["lineage_id"]}
            change.update({"old": old} if old is not MISSING else {})
            change.update({"new": new} if new is not MISSING else {})
            expected.append(change)
        response = await client.get(f"{URL}/history", params={"path": path})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["tenant_id"], body["fsa_id"], body["path"]) == ("t", "f", path)
        got = [{k: v for k, v in c.items() if k not in ("created_at", "trace_id")} for c in body["changes"]]
        assert got == expected, path
        for change in body["changes"]:
            assert datetime.fromisoformat(change["created_at"]).tzinfo is not None
        limited = (await client.get(f"{URL}/history", params={"path": path, "limit": 2})).json()["changes"]
        assert limited == body["changes"][:2]

    # tasks.A.status changed in 7 of 11 versions (v3 by setting its parent); v2, v5, v9, v11 left it alone
    status = (await client.get(f"{URL}/history", params={"path": "tasks.A.status"})).json()["changes"]
    assert [c["version"] for c in status] == [10, 8, 7, 6, 4, 3, 1]
    assert status[-2] == {**status[-2], "actor": "cy", "old": "OPEN", "new": "DONE"}


async def test_history_of_a_whole_collection_lists_its_members_changes(client, conn):
    """A path naming a collection lists its members' changes (path tasks.<member>); where the
    collection itself is or was not an object, a row for the collection with its real values."""
    steps = [
        {"tasks.A.status": "OPEN", "tasks.B.status": "OPEN"},
        {"tasks.A.owner": "bo", "phase": "x"},
        {"tasks": {"$merge": {"B": None, "C": {"status": "NEW"}}}},
        {"phase": "y"},  # another collection
        {"tasks": {"$unset": True}},
        {"tasks": "archived"},
        {"tasks": {"A": {"status": "BACK"}, "B": {}}},
    ]
    states = {0: {}}
    for n, delta in enumerate(steps):
        await write(client, delta, ["al", "bo"][n % 2], "L1")
        v, state = await current(client)
        states[v] = state
    log = {row["version"]: row for row in await log_rows(conn)}
    expected = []
    for v in range(1, max(states) + 1):
        old, new = lookup(states[v - 1], ["tasks"]), lookup(states[v], ["tasks"])
        rows = []
        if (old is not MISSING and not isinstance(old, dict)) or (new is not MISSING and not isinstance(new, dict)):
            rows.append(("tasks", old, new))
        old_members = old if isinstance(old, dict) else {}
        new_members = new if isinstance(new, dict) else {}
        for member in set(old_members) | set(new_members):
            before, after = old_members.get(member, MISSING), new_members.get(member, MISSING)
            if before != after:
                rows.append((dotted(["tasks", member]), before, after))
        for path, before, after in rows:
            change = {"version": v, "path": path, "actor": log[v]["actor"], "lineage_id": "L1"}
            change.update({"old": before} if before is not MISSING else {})
            change.update({"new": after} if after is not MISSING else {})
            expected.append(change)
    body = (await client.get(f"{URL}/history", params={"path": "tasks"})).json()
    versions = [c["version"] for c in body["changes"]]
    assert versions == sorted(versions, reverse=True), "newest first"
    got = [{k: v for k, v in c.items() if k not in ("created_at", "trace_id")} for c in body["changes"]]
    order = lambda c: (-c["version"], c["path"])  # noqa: E731
    assert sorted(got, key=order) == sorted(expected, key=order)


# ---------------------------------------------------------------- what changed since N

CHANGES_WORKLOAD = [
    ({"tasks.A.status": "OPEN", "tasks.B.status": "OPEN", "metrics.n": {"$inc": 1}}, "al", "L1"),
    ({"tasks.A.status": "DONE", "phase": "design"}, "bo", "L2"),
    ({"tasks.C": {"status": "NEW", "title": "long " * 20}}, "cy", None),
    ({"metrics.n": {"$inc": 5}, "tasks.a2.status": "OPEN"}, "al", "L1"),
    ({"tasks.B.status": {"$unset": True}, "metrics.peak": {"$max": 3}}, "bo", "L2"),
    ({"tasks.A.status": "OPEN"}, "cy", "L1"),  # back to what it was at 1
    ({"tasks": {"$merge": {"D": {"status": "NEW"}}}}, None, None),
    ({"phase": "ship", "metrics.peak": {"$max": 1}}, "al", None),
    ({"tags": {"$add": ["x"]}, "tasks.c\\.d": 1}, "bo", "L3"),
    ({"tasks.A.owner": "al", "tasks.D.status": "DONE"}, "al", "L1"),
]


def touches(keys: list[str], spec: str) -> bool:
    """Whether an op on `keys` touches a slice spec `task:GLOB` or a dotted collection.member."""
    if ":" in spec:
        collection, glob = {"task": "tasks"}[spec.split(":")[0]], spec.split(":", 1)[1].lower()
        return keys[0] == collection and (len(keys) == 1 or fnmatchcase(keys[1].lower(), glob))
    collection, member = spec.split(".")
    return keys[0] == collection and (len(keys) == 1 or keys[1] == member)


def expected_changes(states: dict[int, Any], log: list[dict], since: int, spec: str | None = None) -> dict[str, Any]:
    """sms.changes_since computed from the log's ops and the documents at `since` and now."""
    final = max(states)
    ops = [
        (row, op["path"])
        for row in log
        if row["version"] > since
        for op in row["ops"]
        if spec is None or touches(op["path"], spec)
    ]
    versions = {row["version"]: row for row, _ in ops}
    actors: dict[str, int] = {}
    lineages: dict[str, int] = {}
    for row in versions.values():
        name = row["actor"] or "(anonymous)"
        actors[name] = actors.get(name, 0) + 1
        if row["lineage_id"] is not None:
            lineages[row["lineage_id"]] = lineages.get(row["lineage_id"], 0) + 1
    changes = {}
    for row, keys in ops:
        path = dotted(keys)
        change = changes.setdefault(path, {"path": path, "version": 0, "actors": set()})
        change["version"] = max(change["version"], row["version"])
        change["actors"].add(row["actor"] or "(anonymous)")
        old, new = lookup(states[since], keys), lookup(states[final], keys)
        change.update({"old": old} if old is not MISSING else {})
        change.update({"new": new} if new is not MISSING else {})
    for change in changes.values():
        change["actors"] = sorted(change["actors"])
    counts = {"since": since, "version": final, "deltas": len(versions), "actors": actors, "lineages": lineages}
    return {**counts, "changes": changes}


def digest_lines(digest: str) -> dict[str, str]:
    """The digest's per-path lines: {path: "old -> new (vN, actors)"}; each path must appear once."""
    lines = {}
    for line in digest.split("\n")[1:]:
        if line.startswith("… "):
            continue
        assert line.startswith("- "), line
        path, _, rest = line[2:].partition(": ")
        assert path not in lines, f"{path} named twice"
        lines[path] = rest
    return lines


async def changes_workload(client) -> dict[int, Any]:
    states = {0: {}}
    for delta, actor, lineage in CHANGES_WORKLOAD:
        await write(client, delta, actor, lineage)
        v, state = await current(client)
        states[v] = state
    return states


async def test_changes_since_names_each_changed_path_once_old_to_new(make_client, conn):
    async with make_client(snapshot_every=4) as client:
        states = await changes_workload(client)
        log = await log_rows(conn)
        final = max(states)
        for since in range(final + 1):
            response = await client.get(f"{URL}/changes", params={"since": since, "max_tokens": 8000})
            assert response.status_code == 200, response.text
            body = response.json()
            expected = expected_changes(states, log, since)
            paths = [c["path"] for c in body["changes"]]
            assert len(paths) == len(set(paths)), f"a path named twice since {since}: {paths}"
            got = {c["path"]: {**c, "actors": sorted(c["actors"])} for c in body["changes"]}
            assert canonical(got) == canonical(expected.pop("changes")), since
            assert {k: body[k] for k in expected} == expected, since
            # the digest: every changed path exactly once, with its value at `since` and its latest value
            digest = body["digest"]
            assert digest.startswith(f"Changes to t/f v{since} -> v{final}: " if since < final else "No changes")
            lines = digest_lines(digest)
            assert set(lines) == set(got)
            for path, line in lines.items():
                old = brief(got[path]["old"]) if "old" in got[path] else "(absent)"
                new = brief(got[path]["new"]) if "new" in got[path] else "(removed)"
                assert line == f"{old} -> {new} (v{got[path]['version']}, {', '.join(got[path]['actors'])})", line
        # the SQL function gives the same text
        assert (
            await conn.fetchval("SELECT sms.changes_digest('t', 'f', 3, NULL, 8000)")
            == (await client.get(f"{URL}/changes", params={"since": 3, "max_tokens": 8000})).json()["digest"]
        )


@pytest.mark.parametrize("spec", ["task:A*", "task:*", "metrics.peak"])
async def test_changes_since_with_a_slice_leaves_out_changes_outside_it(client, conn, spec):
    states = await changes_workload(client)
    log = await log_rows(conn)
    for since in (0, 2, 5, 9):
        response = await client.get(f"{URL}/changes", params={"since": since, "slice": spec, "max_tokens": 8000})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = expected_changes(states, log, since, spec)
        got = {c["path"]: {**c, "actors": sorted(c["actors"])} for c in body["changes"]}
        assert canonical(got) == canonical(expected.pop("changes")), (spec, since)
        assert {k: body[k] for k in expected} == expected, (spec, since)
        assert set(digest_lines(body["digest"])) == set(got)
        if not got:
            assert body["digest"].startswith(f"No changes to t/f in {spec} since v{since}")


def check_budget(digest: str, max_tokens: int, total: int) -> None:
    """Within budget; when cut, the last line says how many of the `total` paths were not shown."""
    lines = digest_lines(digest)
    cut = re.search(r"\n… (\d+) more changed paths not shown$", digest)
    if cut:
        assert len(lines) + int(cut.group(1)) == total, digest
    elif "\n" in digest:
        assert len(lines) == total, digest
    else:  # the header alone: it and the line saying how many were left out do not fit together
        assert estimate(f"{digest}\n… {total} more changed paths not shown") > max_tokens, digest
    assert estimate(digest) <= max_tokens, f"{estimate(digest)} tokens for a budget of {max_tokens}:\n{digest}"


@pytest.mark.parametrize("max_tokens", [20, 35, 60, 120, 300, 2000])
async def test_the_changes_digest_keeps_to_its_token_budget(client, conn, max_tokens):
    await changes_workload(client)
    for n in range(30):  # many more changed paths than fit in a small budget
        await write(client, {f"tasks.T{n:02}.status": "OPEN", f"metrics.m{n:02}": n}, "al", "L1")
    total = len((await client.get(f"{URL}/changes", params={"since": 0, "max_tokens": 8000})).json()["changes"])
    assert total > 60
    response = await client.get(f"{URL}/changes", params={"since": 0, "max_tokens": max_tokens})
    assert response.status_code == 200, response.text
    check_budget(response.json()["digest"], max_tokens, total)
    check_budget(await conn.fetchval("SELECT sms.changes_digest('t', 'f', 0, NULL, $1)", max_tokens), max_tokens, total)


async def test_the_changes_digest_keeps_to_its_budget_with_many_actors(conn):
    """The header (actors, lineages) counts against the budget too."""
    await conn.execute(
        """SELECT sms.apply_delta('t', 'f', jsonb_build_object('tasks.T' || i || '.status', 'OPEN'),
                                  p_actor => 'agent-number-' || i, p_lineage_id => 'lineage-' || i)
             FROM generate_series(1, 60) i"""
    )
    digest = await conn.fetchval("SELECT sms.changes_digest('t', 'f', 0)")  # default budget: 300 tokens
    check_budget(digest, 300, 60)


async def test_changes_since_a_version_that_does_not_exist_is_a_404(client):
    await write(client, {"a": 1})
    assert_problem(await client.get(f"{URL}/changes", params={"since": 2}), 404, "not-found")
    same = (await client.get(f"{URL}/changes", params={"since": 1})).json()
    assert (same["deltas"], same["changes"], same["digest"]) == (0, [], "No changes to t/f since v1 (now v1).")


# ---------------------------------------------------------------- entry_history is append-only


async def test_entry_history_refuses_update_delete_and_truncate(conn):
    await conn.execute('SELECT sms.apply_delta(\'t\', \'f\', \'{"tasks.A.status": "OPEN", "phase": "x"}\')')
    await conn.execute("SELECT sms.apply_delta('t', 'f', '{\"tasks.A.status\": \"DONE\"}')")
    before = await conn.fetch("SELECT * FROM sms.entry_history ORDER BY 1, 2, 3, 4, 5, 6")
    assert len(before) == 4
    for statement in (
        "UPDATE sms.entry_history SET value = '\"forged\"' WHERE member = 'A'",
        "UPDATE sms.entry_history SET version = version + 100",
        "DELETE FROM sms.entry_history WHERE version = 1",
        "DELETE FROM sms.entry_history",
        "TRUNCATE sms.entry_history",
    ):
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.execute(statement)
        assert raised.value.sqlstate == "SM008", statement
        assert "append-only" in str(raised.value)
    assert await conn.fetch("SELECT * FROM sms.entry_history ORDER BY 1, 2, 3, 4, 5, 6") == before


async def test_a_delta_changing_one_entry_twice_applies_inside_a_savepoint(conn):
    """Two ops on one entry rewrite the entry_history row the delta wrote; that is allowed for the
    writing transaction, also when the write runs in a savepoint (asyncpg/psycopg nested
    transactions)."""
    await conn.execute("SELECT sms.apply_delta('t', 'f', '{\"tasks.A.x\": 1, \"tasks.A.y\": 2}')")
    async with conn.transaction(), conn.transaction():  # the inner one is a SAVEPOINT
        await conn.execute("SELECT sms.apply_delta('t', 'f', '{\"tasks.A.x\": 3, \"tasks.A.y\": 4}')")
    assert json.loads(await conn.fetchval("SELECT sms.document('t', 'f')::text")) == {"tasks": {"A": {"x": 3, "y": 4}}}
    assert json.loads(await conn.fetchval("SELECT sms.document_at('t', 'f', 1)::text")) == {
        "tasks": {"A": {"x": 1, "y": 2}}
    }


async def history_at(conn: asyncpg.Connection, version: int) -> list[tuple[str, bool, str, Any]]:
    rows = await conn.fetch(
        "SELECT collection, is_member, member, value::text FROM sms.entry_history"
        " WHERE tenant_id = 't' AND fsa_id = 'f' AND version = $1 ORDER BY 1, 2, 3",
        version,
    )
    return [(r["collection"], r["is_member"], r["member"], decode(r["value"])) for r in rows]


async def test_a_version_leaves_one_history_row_per_entry_it_changed(conn):
    """Each entry a version changed has one history row with its final value: when $merge turns a
    top-level scalar into an object (its row rewritten as the object's marker), when two ops of a
    delta change one member, and in a batch where a write that changed an entry and then failed
    gave its version to the next write."""
    await conn.execute("SELECT sms.apply_delta('t', 'f', '{\"n\": 5}')")
    await conn.execute("SELECT sms.apply_delta('t', 'f', '{\"n\": {\"$merge\": {\"a\": 1}}}')")
    assert await history_at(conn, 2) == [("n", False, "", {}), ("n", True, "a", 1)]

    await conn.execute("SELECT sms.apply_delta('t', 'f', '{\"tasks.A.a\": 1, \"tasks.A.s\": \"x\"}')")
    assert await history_at(conn, 3) == [("tasks", False, "", {}), ("tasks", True, "A", {"a": 1, "s": "x"})]

    writes = [
        {"delta": {"tasks.A.a": 2, "tasks.A.s": {"$inc": 1}}},  # A.a written, then $inc on a string: SM002
        {"delta": {"tasks.A.a": 3, "tasks.A.b": 4}},
    ]
    results = json.loads(await conn.fetchval("SELECT sms.apply_deltas('t', 'f', $1::jsonb)::text", json.dumps(writes)))
    assert [r["success"] for r in results] == [False, True] and results[0]["sqlstate"] == "SM002"
    assert results[1]["version"] == 4
    assert await history_at(conn, 4) == [("tasks", True, "A", {"a": 3, "b": 4, "s": "x"})]

    documents = {
        v: json.loads(await conn.fetchval("SELECT sms.document_at('t', 'f', $1)::text", v)) for v in (1, 2, 3, 4)
    }
    assert documents == {
        1: {"n": 5},
        2: {"n": {"a": 1}},
        3: {"n": {"a": 1}, "tasks": {"A": {"a": 1, "s": "x"}}},
        4: {"n": {"a": 1}, "tasks": {"A": {"a": 3, "b": 4, "s": "x"}}},
    }
    assert documents[4] == json.loads(await conn.fetchval("SELECT sms.document('t', 'f')::text"))
