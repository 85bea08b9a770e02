"""Group commit and batches (DESIGN §11): many deltas to one state in one transaction, each with its
own version, log row, checks and result; a failing one refused alone (or, atomic, the batch rolled
back); one NOTIFY per transaction; every caller answered as if its delta had been alone."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from helpers import FSA, TENANT, apply_delta, assert_problem, listening, log_rows, snapshot

from app.db.group_commit import GroupCommit
from app.db.queries import Database
from app.domain.delta import WriteMeta
from app.errors import Problem

URL = f"/state/{TENANT}/{FSA}"


async def apply_deltas(conn: asyncpg.Connection, writes: list[dict[str, Any]], atomic: bool = False) -> list[Any]:
    text = await conn.fetchval(
        "SELECT sms.apply_deltas($1, $2, $3::jsonb, $4)::text", TENANT, FSA, json.dumps(writes), atomic
    )
    return json.loads(text)


# --- sms.apply_deltas ----------------------------------------------------------------------------


async def test_a_failing_delta_in_the_middle_is_refused_alone(conn):
    await apply_delta(conn, {"n": 1, "tags": []})
    results = await apply_deltas(
        conn,
        [
            {"delta": {"n": {"$inc": 1}}, "actor": "a"},
            {"delta": {"n": {"$push": 1}}, "actor": "b"},  # n is a number: type mismatch
            {"delta": {"tags": {"$push": "x"}}, "actor": "c"},
            {"delta": {"n": 5}, "expected_version": 2, "actor": "d"},  # the state is at 3 by then
            {"delta": {"n": {"$inc": 10}}, "actor": "e", "lineage_id": "L"},
        ],
    )
    assert [r["success"] for r in results] == [True, False, True, False, True]
    assert [r.get("version") for r in results] == [2, None, 3, None, 4]
    assert results[1]["sqlstate"] == "SM002"
    assert results[3]["sqlstate"] == "SM003"
    assert json.loads(results[3]["detail"])["current_version"] == 3
    version, versions, document = await snapshot(conn)
    assert (version, versions, document) == (4, [1, 2, 3, 4], {"n": 12, "tags": ["x"]})
    rows = await log_rows(conn)
    assert [(r["version"], r["actor"], r["lineage_id"]) for r in rows[1:]] == [
        (2, "a", None),
        (3, "c", None),
        (4, "e", "L"),
    ]
    # one transaction: the batch's versions take one place in the tenant's feed
    places = await conn.fetch("SELECT from_version, to_version FROM sms.feed WHERE to_version > 1")
    assert [tuple(place) for place in places] == [(2, 4)]


async def test_each_result_is_what_the_delta_alone_would_have_answered(conn, database_url):
    """The same writes applied one by one in one database and as one batch in another answer alike."""
    writes = [
        {"delta": {"a.x": 1}, "actor": "w1", "delta_id": str(uuid.UUID(int=1))},
        {"delta": {"a.x": {"$inc": 2}, "$expect": {"a.x": 1}}, "delta_id": str(uuid.UUID(int=2))},
        {"delta": {"a.x": {"$inc": 2}, "$expect": {"a.x": 1}}},  # a.x is 3 by now
        {"delta": {"a.y": {"$max": 7}}, "meta": {"pillar": "p"}, "delta_id": str(uuid.UUID(int=3))},
        {"delta": {"$bad": 1}},
    ]
    batched = await apply_deltas(conn, writes)
    alone_tenant = "alone"
    alone: list[Any] = []
    for write in writes:
        named = {"p_actor": write.get("actor"), "p_delta_id": write.get("delta_id"), "p_meta": write.get("meta", {})}
        try:
            alone.append(await apply_delta(conn, write["delta"], tenant=alone_tenant, **named))
        except asyncpg.PostgresError as exc:
            alone.append({"success": False, "sqlstate": exc.sqlstate, "message": exc.args[0], "detail": exc.detail})
    assert batched == alone
    assert await conn.fetchval("SELECT sms.document($1, $2)::text", TENANT, FSA) == await conn.fetchval(
        "SELECT sms.document($1, $2)::text", alone_tenant, FSA
    )


async def test_idempotent_retries_of_batched_deltas(conn):
    key = str(uuid.uuid4())
    first = await apply_deltas(conn, [{"delta": {"n": {"$inc": 1}}, "delta_id": key}, {"delta": {"m": 1}}])
    # the same key again in a batch, twice in one batch, and alone: applied once
    again = await apply_deltas(
        conn,
        [
            {"delta": {"n": {"$inc": 1}}, "delta_id": key},
            {"delta": {"k": 1}, "delta_id": (other := str(uuid.uuid4()))},
            {"delta": {"k": 1}, "delta_id": other},
            {"delta": {"n": {"$inc": 2}}, "delta_id": key},  # the key with another delta
        ],
    )
    alone = await apply_delta(conn, {"n": {"$inc": 1}}, p_delta_id=key)
    assert first[0]["version"] == again[0]["version"] == alone["version"] == 1
    assert again[0]["duplicate"] is alone["duplicate"] is True
    assert (again[1]["duplicate"], again[2]["duplicate"]) == (False, True)
    assert again[1]["version"] == again[2]["version"] == 3
    assert again[3]["sqlstate"] == "SM005"
    assert (await snapshot(conn))[2] == {"n": 1, "m": 1, "k": 1}


async def test_each_write_of_a_batch_sees_the_version_the_writes_before_it_made(conn):
    """A batch keeps the state's version as its writes move it, and a failing write takes its move
    back: a new state, a type mismatch, expected versions, a policy refusal and a retry in between;
    then, in the same transaction, a lone delta takes the lock itself and publishes."""
    await conn.execute(
        "SELECT sms.set_policy($1, $2, $3::jsonb)", TENANT, FSA, json.dumps([{"path": "budget", "min": 0}])
    )
    key = str(uuid.uuid4())
    results = await apply_deltas(
        conn,
        [
            {"delta": {"n": {"$push": 1}}, "expected_version": 0},  # the state's first version
            {"delta": {"n": {"$inc": 1}}, "expected_version": 1},  # n is an array: refused
            {"delta": {"n": 1, "budget": 5}, "expected_version": 1},  # so the state is still at 1
            {"delta": {"budget": {"$inc": -9}}},  # refused by the policy
            {"delta": {"n": {"$inc": 1}}, "expected_version": 2, "delta_id": key},
            {"delta": {"n": {"$inc": 1}}, "expected_version": 2, "delta_id": key},  # its retry
            {"delta": {"m": 1}, "expected_version": 2},  # the state is at 3
            {"delta": {"m": 1}, "expected_version": 3},
        ],
    )
    assert [r.get("version") for r in results] == [1, None, 2, 2, 3, 3, None, 4]
    assert results[1]["sqlstate"] == "SM002"
    assert results[3]["refused"] is True and results[5]["duplicate"] is True
    assert (results[6]["sqlstate"], json.loads(results[6]["detail"])["current_version"]) == ("SM003", 3)
    assert await snapshot(conn) == (4, [1, 2, 3, 4], {"n": 2, "budget": 5, "m": 1})
    async with conn.transaction():
        places = await conn.fetchval("SELECT count(*) FROM sms.feed")
        await apply_deltas(conn, [{"delta": {"k": 1}}, {"delta": {"k": 2}}])
        alone = await apply_delta(conn, {"k": 3})
        assert alone["version"] == 7
        assert await conn.fetchval("SELECT count(*) FROM sms.feed") == places + 2  # the batch's, and its own
        assert await conn.fetchval("SELECT current_setting('sms.batch_at', true)") == ""
    assert await snapshot(conn) == (7, list(range(1, 8)), {"n": 2, "budget": 5, "m": 1, "k": 3})


async def test_atomic_batch_is_all_or_nothing(conn):
    await apply_delta(conn, {"n": 1})
    before = await snapshot(conn)
    results = await apply_deltas(
        conn,
        [{"delta": {"n": {"$inc": 1}}}, {"delta": {"m": 2}}, {"delta": {"n": {"$push": 1}}}, {"delta": {"k": 1}}],
        atomic=True,
    )
    assert [r["sqlstate"] for r in results] == ["SM014", "SM014", "SM002", "SM014"]
    assert json.loads(results[0]["detail"]) == {"index": 2}
    assert await snapshot(conn) == before
    ok = await apply_deltas(conn, [{"delta": {"n": {"$inc": 1}}}, {"delta": {"m": 2}}], atomic=True)
    assert [r["version"] for r in ok] == [2, 3]


async def test_atomic_batch_keeps_the_record_of_a_policy_refusal(conn):
    await conn.execute(
        "SELECT sms.set_policy($1, $2, $3::jsonb)", TENANT, FSA, json.dumps([{"path": "budget", "min": 0}])
    )
    await apply_delta(conn, {"budget": 5})
    before = await snapshot(conn)
    results = await apply_deltas(
        conn,
        [{"delta": {"budget": {"$inc": -3}}}, {"delta": {"budget": {"$inc": -3}}, "actor": "spender"}],
        atomic=True,
    )
    assert results[0]["sqlstate"] == "SM014"
    assert results[1]["refused"] is True and results[1]["error"] == "policy-violation"
    assert await snapshot(conn) == before
    refusals = await conn.fetch("SELECT actor, refusal_id::text FROM sms.refusals")
    assert [(r["actor"], r["refusal_id"]) for r in refusals] == [("spender", results[1]["refusal_id"])]


async def test_bad_writes_are_refused_alone(conn):
    results = await apply_deltas(
        conn,
        [
            {"delta": {"n": 1}},
            {"actor": "no delta"},
            {"delta": {"n": 2}, "delta_id": "not-a-uuid"},
            {"delta": {"n": 3}, "expected_version": "one"},
            {"delta": {"n": 4}, "meta": [1]},
            {"delta": {"n": 5}, "actor": ""},
            "not an object",
            {"delta": {"n": {"$inc": 1}}},
        ],
    )
    assert [r.get("sqlstate") for r in results] == [None, "SM001", "SM001", "SM001", "SM001", "SM007", "SM001", None]
    assert (await snapshot(conn))[:2] == (2, [1, 2])
    with pytest.raises(asyncpg.PostgresError) as raised:
        await conn.fetchval("SELECT sms.apply_deltas('t', 'f', '{}')")
    assert raised.value.sqlstate == "SM001"


async def test_one_notify_per_batch_with_the_version_range(conn, database_url):
    await apply_delta(conn, {"n": 1})
    async with listening(database_url) as feed:
        await apply_deltas(conn, [{"delta": {"a.x": 1}}, {"delta": {"n": {"$push": 1}}}, {"delta": {"b.y": 2}}])
        payload = await feed.next()
        await feed.assert_silent()
        await apply_deltas(conn, [{"delta": {"n": {"$push": 1}}}])  # nothing applied: nobody is told
        await feed.assert_silent()
    assert payload == {
        "tenant_id": TENANT,
        "fsa_id": FSA,
        "version": 3,
        "from_version": 2,
        "deltas": 2,
    }


async def test_a_batch_does_not_use_a_multixact_per_delta(conn):
    """Each write of a batch runs in a subtransaction of its own; a row lock that one took again on
    the state's header, which the one before had updated, made a MultiXact per delta: a hot state
    used up MultiXact ids, which vacuum must freeze, as fast as versions. Writes that change entries
    the state has take none now (a write that adds an entry still takes one: the foreign key's lock
    on the header)."""
    await apply_delta(conn, {"n": 0, "w": {f"w{i:02d}": 0 for i in range(32)}})
    used = "SELECT mxid_age(datminmxid) FROM pg_database WHERE datname = current_database()"
    before = await conn.fetchval(used)
    results = await apply_deltas(
        conn, [{"delta": {"n": {"$inc": 1}, f"w.w{i:02d}": i + 1}, "actor": f"w{i:02d}"} for i in range(32)]
    )
    assert all(r["success"] for r in results)
    assert await conn.fetchval(used) - before <= 1  # was 32
    assert (await snapshot(conn))[2] == {"n": 32, "w": {f"w{i:02d}": i + 1 for i in range(32)}}


# --- the group committer -------------------------------------------------------------------------


def _meta(**fields: Any) -> WriteMeta:
    return WriteMeta(**fields)


async def test_concurrent_deltas_share_transactions_and_each_gets_its_own_answer(database_url, conn):
    await apply_delta(conn, {"owner": "x", "n": 0})
    db = await Database.connect(database_url, min_size=1, max_size=4)
    group = GroupCommit(window=0.002, max_batch=8)
    try:
        stale = json.dumps({"owner": "y", "$expect": {"owner": "nobody"}})

        async def write(i: int) -> Any:
            delta = stale if i % 10 == 5 else json.dumps({"n": {"$inc": 1}, f"by.w{i}": i})
            try:
                return json.loads(await group.apply(db, TENANT, FSA, delta, _meta(actor=f"w{i}")))
            except Problem as problem:
                return problem

        answers = await asyncio.gather(*(write(i) for i in range(60)))
    finally:
        await db.close()
    refused = [a for a in answers if isinstance(a, Problem)]
    applied = [a for a in answers if not isinstance(a, Problem)]
    assert len(refused) == 6
    assert all(p.status == 409 and p.slug == "expectation-failed" and p.extra["failed"] == ["owner"] for p in refused)
    assert sorted(a["version"] for a in applied) == list(range(2, 56))
    assert group.batches > 0  # they did meet
    version, versions, document = await snapshot(conn)
    assert version == 55 and versions == list(range(1, 56)) and document["n"] == 54
    rows = await log_rows(conn)
    assert {row["actor"] for row in rows[1:]} == {f"w{i}" for i in range(60) if i % 10 != 5}
    assert await conn.fetchval("SELECT count(*) FROM sms.feed") < 55  # a place per transaction


async def test_a_refused_delta_that_waited_alone_gets_its_problem(database_url, conn):
    """Two deltas at once: the first goes alone, the second waits and then goes alone too, refused by
    its $expect. Its caller gets the 409 (it once got nothing, and the lane stopped working)."""
    db = await Database.connect(database_url, min_size=1, max_size=4)
    group = GroupCommit(window=0.002, max_batch=8)
    try:
        for round_ in range(5):
            first = group.apply(db, TENANT, FSA, json.dumps({"n": round_}), _meta())
            second = group.apply(db, TENANT, FSA, '{"x": 1, "$expect": {"x": 2}}', _meta())
            applied, refused = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 30)
            assert json.loads(applied)["version"] == round_ + 1
            assert isinstance(refused, Problem) and (refused.status, refused.slug) == (409, "expectation-failed")
        third = await group.apply(db, TENANT, FSA, '{"n": 9}', _meta())  # the lane still works
    finally:
        await db.close()
    assert json.loads(third)["version"] == 6


async def test_every_caller_of_a_batch_gets_the_database_being_away(database_url, conn):
    """A batch the database cannot take (here: the schema is not there, as during a restore) gives
    each of its callers the problem, as each alone would have had it."""
    db = await Database.connect(database_url, min_size=1, max_size=4)
    group = GroupCommit(window=0.01, max_batch=8)
    try:
        await conn.execute("ALTER FUNCTION sms.apply_deltas(text, text, jsonb, boolean) RENAME TO gone")
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(group.apply(db, TENANT, FSA, json.dumps({f"k{i}": i}), _meta()) for i in range(5)),
                return_exceptions=True,
            ),
            30,
        )
    finally:
        await db.close()
        # as it was: a shared database (Citus) serves the next tests
        await conn.execute("ALTER FUNCTION sms.gone(text, text, jsonb, boolean) RENAME TO apply_deltas")
    assert json.loads(answers[0])["version"] == 1  # alone, before the others met
    assert all(isinstance(a, Problem) and a.status == 503 for a in answers[1:]), answers
    assert len({id(a) for a in answers[1:]}) == 4  # each its own


async def test_a_delta_postgresql_refuses_as_text_fails_alone(database_url, conn):
    """A batch PostgreSQL cannot even read (one delta's text holds \\u0000) is applied delta by delta."""
    db = await Database.connect(database_url, min_size=1, max_size=4)
    group = GroupCommit(window=0.01, max_batch=8)
    try:

        async def write(delta: str) -> Any:
            try:
                return json.loads(await group.apply(db, TENANT, FSA, delta, _meta()))
            except Problem as problem:
                return problem

        answers = await asyncio.gather(
            *(write(json.dumps({f"k{i}": i})) for i in range(3)), write('{"bad": "\\u0000"}'), write('{"k9": 9}')
        )
    finally:
        await db.close()
    assert [isinstance(a, Problem) for a in answers] == [False, False, False, True, False]
    assert answers[3].status == 400
    assert (await snapshot(conn))[0] == 4


# --- over HTTP -----------------------------------------------------------------------------------


async def test_concurrent_http_deltas_answer_as_alone(live_url, conn):
    async with httpx.AsyncClient(base_url=live_url, limits=httpx.Limits(max_connections=40)) as client:
        await _concurrent_http_deltas(client, conn)


async def _concurrent_http_deltas(client: httpx.AsyncClient, conn: asyncpg.Connection) -> None:
    await client.post(URL, json={"owner": "x", "n": 0})
    lone_conflict = await client.post(f"{URL}/delta", json={"owner": "y", "$expect": {"owner": "nobody"}})
    lone_body = assert_problem(lone_conflict, 409, "expectation-failed")

    async def write(i: int):
        if i % 8 == 3:
            return await client.post(f"{URL}/delta", json={"owner": "y", "$expect": {"owner": "nobody"}})
        return await client.post(f"{URL}/delta?actor=w{i}", json={"n": {"$inc": 1}})

    responses = await asyncio.gather(*(write(i) for i in range(40)))
    conflicts = [r for r in responses if r.status_code == 409]
    assert len(conflicts) == 5
    for response in conflicts:
        body = assert_problem(response, 409, "expectation-failed")
        assert {k: v for k, v in body.items() if k != "current_version"} == {
            k: v for k, v in lone_body.items() if k != "current_version"
        }
        assert response.headers["etag"] == f'"{body["current_version"]}"'
    applied = [r for r in responses if r.status_code == 200]
    assert sorted(r.json()["version"] for r in applied) == list(range(2, 37))
    assert all(r.headers["etag"] == f'"{r.json()["version"]}"' for r in applied)
    assert (await snapshot(conn))[2]["n"] == 35
    # they met: fewer transactions than deltas
    assert await conn.fetchval("SELECT count(*) FROM sms.feed") < 36  # a place per transaction


async def test_concurrent_heartbeats_share_transactions(live_url, conn):
    """Heartbeats are deltas to their state: those that meet on a busy state go in one transaction
    with each other and with its deltas, rather than each taking a turn on the state's lock and a
    WAL flush of its own (which made every delta of a state with 200 agents wait for them)."""
    agents = [f"team/Agent.{i}" for i in range(40)]  # a "/" and a "." in each name
    async with httpx.AsyncClient(base_url=live_url, limits=httpx.Limits(max_connections=60)) as client:
        await client.post(URL, json={"n": 0})
        responses = await asyncio.gather(
            *(client.post(f"/agents/{TENANT}/{FSA}/{agent}/heartbeat") for agent in agents),
            *(client.post(f"{URL}/delta", json={"n": {"$inc": 1}}) for _ in range(20)),
        )
    assert [r.status_code for r in responses] == [200] * 60
    beats = responses[:40]
    assert [r.json()["agent"] for r in beats] == agents
    assert sorted(r.json()["version"] for r in responses) == list(range(2, 62))
    assert all(r.headers["etag"] == f'"{r.json()["version"]}"' for r in responses)
    state = (await snapshot(conn))[2]
    assert state["n"] == 20
    assert state["agents_online"] == {agent: r.json()["timestamp"] for agent, r in zip(agents, beats, strict=True)}
    # they met: fewer transactions than writes, a place in the feed per transaction
    assert await conn.fetchval("SELECT count(*) FROM sms.feed") < 40


async def test_a_heartbeat_writes_what_sms_heartbeat_writes(client, conn):
    """The service applies a heartbeat as a delta it makes itself: the same log row (ops, actor,
    lineage, meta) as sms.heartbeat writes for the same agent at the same time."""
    response = await client.post(
        f"/agents/{TENANT}/{FSA}/team/Design.Bot/heartbeat?lineage_id=sprint-7&pillar=ops",
        headers={"Idempotency-Key": "beat-1", "If-Match": '"99"'},  # neither applies to a heartbeat
    )
    assert response.status_code == 200
    beat = response.json()
    assert beat["agent"] == "team/Design.Bot" and beat["version"] == 1
    await conn.execute(
        "SELECT sms.heartbeat($1, 'other', 'team/Design.Bot', 'sprint-7', $2::text::timestamptz, $3::jsonb)",
        TENANT,
        beat["timestamp"],
        json.dumps({"pillar": "ops"}),
    )
    ours, theirs = (await log_rows(conn))[0], (await log_rows(conn, TENANT, "other"))[0]
    kept = ("actor", "lineage_id", "meta", "ops", "paths")
    assert {k: ours[k] for k in kept} == {k: theirs[k] for k in kept}
    assert ours["actor"] == "team/Design.Bot" and ours["meta"] == {"pillar": "ops", "heartbeat": True}
    assert (await snapshot(conn))[2] == {"agents_online": {"team/Design.Bot": beat["timestamp"]}}


async def test_batch_endpoint_independent(client, conn):
    key = str(uuid.uuid4())
    writes = [
        {"delta": {"n": 1}, "actor": "a", "delta_id": key},
        {"delta": {"n": {"$push": 1}}},
        {"delta": [{"path": "m", "op": "inc", "value": 2}], "lineage_id": "L", "meta": {"pillar": "ops", "n": 3}},
        {"delta": {"n": 9}, "expected_version": 0},
    ]
    response = await client.post(f"{URL}/deltas", json=writes, headers={"X-Actor": "batcher"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["tenant_id"], body["fsa_id"], body["atomic"], body["applied"]) == (TENANT, FSA, False, 2)
    first, mismatch, third, conflict = body["results"]
    assert (first["version"], first["delta_id"], first["duplicate"]) == (1, key, False)
    assert mismatch["type"] == "urn:sms:problem:type-mismatch" and mismatch["status"] == 422
    assert third["version"] == 2 and third["changed"] == ["m"]
    assert conflict["type"] == "urn:sms:problem:version-conflict" and conflict["current_version"] == 2
    rows = await log_rows(conn)
    assert [(r["actor"], r["lineage_id"], r["meta"]) for r in rows] == [
        ("a", None, {}),
        ("batcher", "L", {"pillar": "ops", "n": "3"}),
    ]
    again = await client.post(f"{URL}/deltas", json=writes[:1])
    assert again.json()["results"][0] == {**first, "duplicate": True}


async def test_batch_endpoint_atomic(client, conn):
    await client.post(f"{URL}/delta", json={"n": 1})
    before = await snapshot(conn)
    writes = [{"delta": {"n": {"$inc": 1}}}, {"delta": {"n": 5}, "expected_version": 1}]
    response = await client.post(f"{URL}/deltas?atomic=true", json=writes)
    body = assert_problem(response, 409, "version-conflict")
    assert body["index"] == 1 and body["current_version"] == 2
    assert body["results"][0]["type"] == "urn:sms:problem:batch-aborted"
    assert await snapshot(conn) == before
    ok = await client.post(f"{URL}/deltas?atomic=true", json=writes[:1] * 3)
    assert [r["version"] for r in ok.json()["results"]] == [2, 3, 4]


@pytest.mark.parametrize(
    ("body", "status", "slug", "index"),
    [
        ("[]", 422, "invalid-delta", None),
        ("{}", 422, "invalid-delta", None),
        ("[1]", 422, "invalid-delta", None),
        ('[{"delta": {"n": 1}, "extra": 1}]', 422, "invalid-delta", None),
        ('[{"delta": {"n": 1}}, {"delta": "n"}]', 422, "invalid-delta", 1),
        ('[{"delta": {"n": 1}}, {"delta": {"n": 1}, "actor": ""}]', 422, "invalid-id", 1),
        ('[{"delta": {"n": 1}, "meta": {"x": "\\u0000"}}]', 400, "malformed-request", 0),
        ('[{"delta": {"n": 1}, "delta_id": ""}]', 422, "invalid-id", 0),
        (json.dumps([{"delta": {"n": 1}}] * 65), 422, "invalid-delta", None),
        ('[{"delta": {"n": 1}, "expected_version": 1.5}]', 400, "malformed-request", 0),
        ("[{", 400, "malformed-request", None),
    ],
)
async def test_batch_endpoint_bad_input_changes_nothing(client, conn, body, status, slug, index):
    response = await client.post(f"{URL}/deltas", content=body, headers={"content-type": "application/json"})
    problem = assert_problem(response, status, slug)
    assert problem.get("index") == index
    assert await snapshot(conn) == (0, [], {})


async def test_concurrent_batches_from_many_connections_lose_nothing(database_url, conn):
    """20 connections at once, each sending batches of ten writes to one state (every fifth one
    failing its $expect): the counter is exact, the versions are gap-free and each state's versions
    commit in their transactions' order."""

    async def client(n: int) -> int:
        connection = await asyncpg.connect(database_url)
        applied = 0
        try:
            for _ in range(5):
                writes = [
                    {"delta": {"n": {"$inc": 1}, **({"$expect": {"never": 1}} if i % 5 == 4 else {})}, "actor": f"c{n}"}
                    for i in range(10)
                ]
                results = await apply_deltas(connection, writes)
                applied += sum(1 for r in results if r["success"])
        finally:
            await connection.close()
        return applied

    applied = await asyncio.gather(*(client(n) for n in range(20)))
    assert sum(applied) == 800
    version, versions, document = await snapshot(conn)
    assert (version, versions, document) == (800, list(range(1, 801)), {"n": 800})
    in_feed = await conn.fetch(
        "SELECT d.version FROM sms.feed f JOIN sms.deltas d ON d.tenant_id = f.tenant_id AND d.fsa_id = f.fsa_id"
        " AND d.version BETWEEN f.from_version AND f.to_version ORDER BY f.position, d.version"
    )
    assert [row["version"] for row in in_feed] == list(range(1, 801))
