"""The guarantees of DESIGN §4.3 and §7: idempotent retries, optimistic concurrency, the append-only
log with gap-free versions, and one small NOTIFY per applied delta, delivered on commit."""

from __future__ import annotations

import json
import uuid

import asyncpg
import pytest
from helpers import (
    FSA,
    TENANT,
    apply_delta,
    assert_problem,
    document,
    listening,
    log_rows,
    log_versions,
    snapshot,
    version,
)

URL = "/state/t/f"

# ---------------------------------------------------------------- idempotency (SQL)


async def test_same_delta_id_twice_applies_once_and_returns_the_first_result(conn, database_url):
    delta_id = uuid.uuid4()
    async with listening(database_url) as feed:
        first = await apply_delta(conn, {"n": {"$inc": 1}, "tags": {"$push": "x"}}, p_delta_id=delta_id)
        second = await apply_delta(conn, {"n": {"$inc": 1}, "tags": {"$push": "x"}}, p_delta_id=delta_id)
        assert first["duplicate"] is False
        assert second == {**first, "duplicate": True}
        assert second["delta_id"] == str(delta_id)
        assert await document(conn) == {"n": 1, "tags": ["x"]}
        assert await log_versions(conn) == [1]
        assert (await feed.next())["version"] == 1
        await feed.assert_silent()


async def test_a_retry_after_the_state_moved_on_still_returns_the_first_result(conn):
    delta_id = uuid.uuid4()
    first = await apply_delta(conn, {"n": {"$inc": 1}}, p_delta_id=delta_id, p_expected_version=0)
    await apply_delta(conn, {"n": {"$inc": 10}})
    # the retry carries the stale expected version it was first sent with: still a duplicate, not a 409
    retry = await apply_delta(conn, {"n": {"$inc": 1}}, p_delta_id=delta_id, p_expected_version=0)
    assert retry == {**first, "duplicate": True}
    assert await document(conn) == {"n": 11}
    assert await version(conn) == 2


async def test_same_delta_id_with_a_different_delta_is_refused(conn):
    delta_id = uuid.uuid4()
    await apply_delta(conn, {"n": {"$inc": 1}}, p_delta_id=delta_id)
    before = await snapshot(conn)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await apply_delta(conn, {"n": {"$inc": 2}}, p_delta_id=delta_id)
    assert raised.value.sqlstate == "SM005"
    assert str(delta_id) in str(raised.value)
    assert await snapshot(conn) == before


async def test_delta_ids_are_unique_per_state_not_globally(conn):
    delta_id = uuid.uuid4()
    one = await apply_delta(conn, {"n": 1}, fsa="one", p_delta_id=delta_id)
    two = await apply_delta(conn, {"n": 2}, fsa="two", p_delta_id=delta_id)
    assert one["duplicate"] is two["duplicate"] is False
    assert await document(conn, fsa="one") == {"n": 1}
    assert await document(conn, fsa="two") == {"n": 2}


# ---------------------------------------------------------------- idempotency (HTTP)


async def test_same_idempotency_key_header_twice_applies_once(client):
    headers = {"Idempotency-Key": "retry-me-1"}
    first = await client.post(f"{URL}/delta", json={"n": {"$inc": 5}}, headers=headers)
    second = await client.post(f"{URL}/delta", json={"n": {"$inc": 5}}, headers=headers)
    assert first.status_code == second.status_code == 200, second.text
    assert first.json()["duplicate"] is False
    assert second.json() == {**first.json(), "duplicate": True}
    assert second.headers["etag"] == '"1"'
    state = (await client.get(URL)).json()
    assert (state["version"], state["state"]) == (1, {"n": 5})
    assert len((await client.get(f"{URL}/deltas")).json()["deltas"]) == 1


async def test_same_delta_id_query_parameter_twice_applies_once(client):
    delta_id = str(uuid.uuid4())
    first = await client.post(f"{URL}/delta?delta_id={delta_id}", json={"tags": {"$push": "a"}})
    second = await client.post(f"{URL}/delta?delta_id={delta_id}", json={"tags": {"$push": "a"}})
    assert first.json()["delta_id"] == delta_id
    assert second.status_code == 200
    assert second.json() == {**first.json(), "duplicate": True}
    assert (await client.get(URL)).json()["state"] == {"tags": ["a"]}


async def test_idempotency_key_reused_for_another_delta_is_a_409(client):
    headers = {"Idempotency-Key": "key-2"}
    await client.post(f"{URL}/delta", json={"n": {"$inc": 1}}, headers=headers)
    response = await client.post(f"{URL}/delta", json={"n": {"$inc": 2}}, headers=headers)
    assert_problem(response, 409, "idempotency-key-reused")
    state = (await client.get(URL)).json()
    assert (state["version"], state["state"]) == (1, {"n": 1})


async def test_replacing_the_state_twice_with_the_same_idempotency_key_applies_once(client):
    await client.post(f"{URL}/delta", json={"old": 1})
    headers = {"Idempotency-Key": "replace-1"}
    first = await client.post(URL, json={"new": 2}, headers=headers)
    assert first.status_code == 200, first.text
    retry = await client.post(URL, json={"new": 2}, headers=headers)
    assert retry.status_code == 200, retry.text
    assert retry.json() == {**first.json(), "duplicate": True}
    state = (await client.get(URL)).json()
    assert (state["version"], state["state"]) == (2, {"new": 2})


# ---------------------------------------------------------------- optimistic concurrency


async def test_expected_version_conflict_in_sql_reports_current_values(conn):
    await apply_delta(conn, {"n": 1, "tasks.T": {"s": "OPEN"}})
    before = await snapshot(conn)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await apply_delta(conn, {"n": 2, "tasks.T.s": "DONE", "absent": 1}, p_expected_version=0)
    assert raised.value.sqlstate == "SM003"
    detail = json.loads(raised.value.detail)
    assert detail == {"current_version": 1, "current": {"n": 1, "tasks.T.s": "OPEN"}}
    assert await snapshot(conn) == before


async def test_expect_conflict_in_sql(conn):
    await apply_delta(conn, {"status": "OPEN"})
    before = await snapshot(conn)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await apply_delta(conn, {"status": "DONE", "$expect": {"status": "IN_PROGRESS"}})
    assert raised.value.sqlstate == "SM004"
    detail = json.loads(raised.value.detail)
    assert detail["current_version"] == 1
    assert detail["current"] == {"status": "OPEN"}
    assert detail["failed"] == ["status"]
    assert await snapshot(conn) == before


async def _seed(client) -> None:
    response = await client.post(f"{URL}/delta", json={"tasks.T1.status": "OPEN", "n": 1})
    assert response.status_code == 200
    response = await client.post(f"{URL}/delta", json={"n": {"$inc": 1}})
    assert response.json()["version"] == 2


async def _unchanged(client) -> None:
    state = (await client.get(URL)).json()
    assert state["version"] == 2
    assert state["state"] == {"tasks": {"T1": {"status": "OPEN"}}, "n": 2}
    assert [d["version"] for d in (await client.get(f"{URL}/deltas")).json()["deltas"]] == [1, 2]


async def test_stale_expected_version_query_parameter_is_a_409_with_current_values(client):
    await _seed(client)
    response = await client.post(f"{URL}/delta?expected_version=1", json={"n": 10, "tasks.T1.status": "DONE"})
    problem = assert_problem(response, 409, "version-conflict")
    assert problem["current_version"] == 2
    assert problem["current"] == {"n": 2, "tasks.T1.status": "OPEN"}
    assert response.headers["etag"] == '"2"'
    await _unchanged(client)
    response = await client.post(f"{URL}/delta?expected_version=2", json={"n": 10})
    assert response.status_code == 200
    assert response.json()["version"] == 3


async def test_stale_if_match_header_is_a_409_with_current_values(client):
    await _seed(client)
    response = await client.post(f"{URL}/delta", json={"n": 10}, headers={"If-Match": '"1"'})
    problem = assert_problem(response, 409, "version-conflict")
    assert (problem["current_version"], problem["current"]) == (2, {"n": 2})
    await _unchanged(client)
    response = await client.post(f"{URL}/delta", json={"n": 10}, headers={"If-Match": '"2"'})
    assert response.status_code == 200
    assert response.json()["version"] == 3


async def test_failed_expect_value_is_a_409_with_current_values(client):
    await _seed(client)
    delta = {"tasks.T1.status": "DONE", "$expect": {"tasks.T1.status": "IN_PROGRESS"}}
    response = await client.post(f"{URL}/delta", json=delta)
    problem = assert_problem(response, 409, "expectation-failed")
    assert problem["current_version"] == 2
    assert problem["current"] == {"tasks.T1.status": "OPEN"}
    await _unchanged(client)
    delta["$expect"] = {"tasks.T1.status": "OPEN", "n": 2}
    response = await client.post(f"{URL}/delta", json=delta)
    assert response.status_code == 200, response.text
    assert (await client.get(URL)).json()["state"]["tasks"]["T1"]["status"] == "DONE"


async def test_expect_exists_false_guards_creation(client):
    await _seed(client)
    response = await client.post(f"{URL}/delta", json={"tasks.T1": {}, "$expect": {"tasks.T1": {"$exists": False}}})
    problem = assert_problem(response, 409, "expectation-failed")
    assert problem["current_version"] == 2
    assert problem["current"] == {"tasks.T1": {"status": "OPEN"}}
    await _unchanged(client)
    response = await client.post(
        f"{URL}/delta", json={"tasks.T2.status": "NEW", "$expect": {"tasks.T2": {"$exists": False}}}
    )
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 3


async def test_expect_exists_true_guards_missing_paths(client):
    await _seed(client)
    response = await client.post(f"{URL}/delta", json={"tasks.T9.s": 1, "$expect": {"tasks.T9": {"$exists": True}}})
    problem = assert_problem(response, 409, "expectation-failed")
    assert problem["current_version"] == 2
    assert problem["current"] == {}
    await _unchanged(client)
    response = await client.post(f"{URL}/delta", json={"tasks.T1.s": 1, "$expect": {"tasks.T1": {"$exists": True}}})
    assert response.status_code == 200, response.text


# ---------------------------------------------------------------- the log


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE sms.deltas SET actor = 'mallory'",
        "DELETE FROM sms.deltas",
        "DELETE FROM sms.deltas WHERE version = 1",
        "TRUNCATE sms.deltas",
        "TRUNCATE sms.deltas CASCADE",
    ],
)
async def test_the_log_refuses_changes_made_directly_in_sql(conn, statement):
    await apply_delta(conn, {"a": 1}, p_actor="alice")
    await apply_delta(conn, {"b": 2}, p_actor="alice")
    before = await log_rows(conn)
    with pytest.raises(asyncpg.PostgresError) as raised:
        await conn.execute(statement)
    assert raised.value.sqlstate == "SM008"
    assert "append-only" in str(raised.value)
    assert await log_rows(conn) == before


async def test_versions_are_gap_free_despite_rejected_deltas(conn):
    delta_id = uuid.uuid4()
    applied = []
    attempts = [
        ({"n": 1}, {}),
        ({"n": {"$push": 1}}, {}),  # type mismatch
        ({"n": {"$inc": 1}}, {"p_delta_id": delta_id}),
        ({"n": {"$inc": 1}}, {"p_delta_id": delta_id}),  # duplicate
        ({"n": 5}, {"p_expected_version": 0}),  # version conflict
        ({"n": 5, "$expect": {"n": 99}}, {}),  # failed expectation
        ({"a..b": 1}, {}),  # malformed
        ({"m": {"$max": 3}}, {}),
        ({"m": {"$unset": True}, "n": {"$inc": 1}}, {}),
    ]
    for delta, named in attempts:
        try:
            result = await apply_delta(conn, delta, **named)
        except asyncpg.PostgresError:
            continue
        if not result["duplicate"]:
            applied.append(result["version"])
    assert applied == [1, 2, 3, 4]
    assert await log_versions(conn) == [1, 2, 3, 4]
    assert await version(conn) == 4
    assert await document(conn) == {"n": 3}


async def test_replaying_the_log_reproduces_the_state(conn):
    deltas = [
        {"tasks": {"A": {"s": "OPEN"}, "B": 1}, "n": 0.1, "tags": ["x"]},
        {"tasks.A.s": "DONE", "n": {"$inc": 0.2}, "tags": {"$add": ["y", "x"]}},
        {"tasks": {"$merge": {"B": None, "C": {"k": [1]}}}, "hist": {"$push": {"$each": [1, 2, 3], "$slice": -2}}},
        {"lo": {"$min": 3}, "hi": {"$max": "b"}, "tags": {"$pull": "x"}, "a\\.b.c": {"$set": {"$lit": 1}}},
        {"tasks.C.k": {"$unset": True}, "n": {"$merge": {"now": "object"}}},
    ]
    for delta in deltas:
        await apply_delta(conn, delta)
    for row in await log_rows(conn):
        delta = await conn.fetchval("SELECT sms.ops_to_delta($1::jsonb)::text", json.dumps(row["ops"]))
        await apply_delta(conn, delta, tenant="replay")
    assert await document(conn, tenant="replay") == await document(conn)
    assert await version(conn, tenant="replay") == await version(conn) == len(deltas)


# ---------------------------------------------------------------- NOTIFY


async def test_one_notification_per_applied_delta_in_order(conn, database_url):
    async with listening(database_url) as feed:
        results = [await apply_delta(conn, {"n": {"$inc": 1}}) for _ in range(3)]
        heard = [await feed.next() for _ in range(3)]
        await feed.assert_silent()
    assert [h["version"] for h in heard] == [1, 2, 3]
    assert [h["delta_id"] for h in heard] == [r["delta_id"] for r in results]


async def test_notification_is_sent_on_commit_only(conn, database_url):
    async with listening(database_url) as feed:
        transaction = conn.transaction()
        await transaction.start()
        await apply_delta(conn, {"n": 1})
        await apply_delta(conn, {"m": 1}, fsa="other")
        await feed.assert_silent()
        await transaction.commit()
        heard = {(h["fsa_id"], h["version"]) for h in [await feed.next(), await feed.next()]}
        assert heard == {(FSA, 1), ("other", 1)}
        await feed.assert_silent()


async def test_a_rolled_back_delta_sends_nothing(conn, database_url):
    async with listening(database_url) as feed:
        transaction = conn.transaction()
        await transaction.start()
        await apply_delta(conn, {"n": 1})
        await transaction.rollback()
        await feed.assert_silent()
    assert await version(conn) == 0


async def test_rejected_and_duplicate_deltas_send_nothing(conn, database_url):
    delta_id = uuid.uuid4()
    await apply_delta(conn, {"n": 1}, p_delta_id=delta_id)
    async with listening(database_url) as feed:
        rejected = [
            ({"n": {"$push": 1}}, {}),
            ({"n": 2}, {"p_expected_version": 0}),
            ({"n": 2, "$expect": {"n": 0}}, {}),
            ({"n": 2}, {"p_delta_id": delta_id}),  # same id, other delta
            ({"": 1}, {}),
        ]
        for delta, named in rejected:
            with pytest.raises(asyncpg.PostgresError):
                await apply_delta(conn, delta, **named)
        duplicate = await apply_delta(conn, {"n": 1}, p_delta_id=delta_id)
        assert duplicate["duplicate"] is True
        await feed.assert_silent()


async def test_notification_payload_fields(conn, database_url):
    async with listening(database_url) as feed:
        result = await apply_delta(
            conn,
            {"tasks.T1.status": "DONE", "metrics.ctr": {"$inc": 1}, "n": 1},
            p_actor="DesignBot",
            p_lineage_id="L1",
        )
        payload = await feed.next()
    assert payload == {
        "tenant_id": TENANT,
        "fsa_id": FSA,
        "version": 1,
        "delta_id": result["delta_id"],
        "actor": "DesignBot",
        "lineage_id": "L1",
        "collections": ["metrics", "n", "tasks"],
    }


async def test_the_log_row_names_each_path_in_order_and_each_collection_once_sorted(conn):
    """A delta's log row: its ops' dotted paths in the order of its ops (escaped as written) and its
    collections (their first keys) each once, sorted — alone and in a batch."""
    delta = {"z.k": 1, "a\\.b.x": 1, "a\\.b.y": 2, "m": {"$inc": 1}}
    await apply_delta(conn, delta)
    await conn.fetchval(
        "SELECT sms.apply_deltas($1, $2, $3::jsonb)::text",
        TENANT,
        FSA,
        json.dumps([{"delta": delta}, {"delta": {"z": 1}}]),
    )
    rows = await conn.fetch(
        "SELECT paths, collections FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2 ORDER BY version", TENANT, FSA
    )
    order = await conn.fetchval("SELECT array_agg(key) FROM jsonb_each($1::jsonb)", json.dumps(delta))
    assert order == ["m", "z.k", "a\\.b.x", "a\\.b.y"]  # the ops' order: jsonb's order of keys
    assert [(r["paths"], r["collections"]) for r in rows] == [
        (order, ["a.b", "m", "z"]),
        (order, ["a.b", "m", "z"]),
        (["z"], ["z"]),
    ]


async def test_notification_stays_small_for_many_long_collection_names(conn, database_url):
    delta = {f"collection_{i:03d}_{'x' * 200}.member": i for i in range(500)}
    async with listening(database_url) as feed:
        result = await apply_delta(conn, delta, p_actor="a" * 128, p_lineage_id="l" * 128)
        raw = await feed.next_payload()
    assert len(raw.encode()) < 1024
    payload = json.loads(raw)
    assert payload["truncated"] is True
    assert payload["version"] == 1
    assert payload["delta_id"] == result["delta_id"]
    assert (payload["tenant_id"], payload["fsa_id"]) == (TENANT, FSA)
    assert "collections" not in payload


async def test_notification_never_carries_a_huge_value(conn, database_url):
    async with listening(database_url) as feed:
        await apply_delta(conn, {"blob": "v" * 500_000, "tasks.T1.notes": ["w" * 1000] * 100})
        raw = await feed.next_payload()
    assert len(raw.encode()) < 1024
    assert json.loads(raw)["collections"] == ["blob", "tasks"]
    assert len(await conn.fetchval("SELECT sms.document($1, $2) ->> 'blob'", TENANT, FSA)) == 500_000


async def test_notification_stays_small_with_the_longest_ids(conn, database_url):
    # 128-byte ids made of characters that JSON escapes, so their text doubles
    tenant, fsa = '"' * 128, "\\" * 128
    async with listening(database_url) as feed:
        await apply_delta(conn, {"c": 1}, tenant=tenant, fsa=fsa, p_actor='"' * 128, p_lineage_id="\\" * 128)
        raw = await feed.next_payload()
    assert len(raw.encode()) < 1024
    payload = json.loads(raw)
    assert (payload["tenant_id"], payload["fsa_id"], payload["version"]) == (tenant, fsa, 1)


async def test_http_writes_notify_with_their_metadata(client, database_url):
    async with listening(database_url) as feed:
        response = await client.post(f"{URL}/delta?actor=DesignBot&lineage_id=L7", json={"n": 1})
        payload = await feed.next()
        await client.post(f"{URL}/delta", json={"n": {"$push": 1}})  # rejected
        await feed.assert_silent()
    assert payload["delta_id"] == response.json()["delta_id"]
    assert (payload["actor"], payload["lineage_id"], payload["collections"]) == ("DesignBot", "L7", ["n"])
