"""The HTTP routes of DESIGN §8: reads with ETags, full replacement, dry-run validation, the log,
JSON Patch and Merge Patch bodies, metadata from query parameters and headers, and ids in URLs."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal

import asyncpg
import httpx
import pytest
from helpers import FSA, TENANT, apply_delta, assert_problem, document, listening, log_rows, snapshot

URL = "/state/t/f"
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


async def write(client, delta, url: str = URL, **kwargs) -> dict:
    response = await client.post(f"{url}/delta", json=delta, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


async def read(client, url: str = URL) -> dict:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------- reads


async def test_health(client):
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"]) == ("ok", "ok")
    assert body["postgres"][:2].isdigit()


async def test_a_state_never_written_reads_as_empty_at_version_0(client, conn):
    response = await client.get("/state/nobody/nothing")
    assert response.status_code == 200
    assert response.json() == {"tenant_id": "nobody", "fsa_id": "nothing", "version": 0, "state": {}}
    assert response.headers["etag"] == '"0"'
    assert await conn.fetchval("SELECT count(*) FROM sms.states") == 0


async def test_etag_is_the_quoted_version_and_if_none_match_gives_304(client):
    await write(client, {"a": 1})
    await write(client, {"b": 2})
    response = await client.get(URL)
    assert response.headers["etag"] == '"2"'
    for tag in ['"2"', 'W/"2"']:
        cached = await client.get(URL, headers={"If-None-Match": tag})
        assert cached.status_code == 304, tag
        assert cached.content == b""
        assert cached.headers["etag"] == '"2"'
    await write(client, {"c": 3})
    fresh = await client.get(URL, headers={"If-None-Match": '"2"'})
    assert fresh.status_code == 200
    assert fresh.headers["etag"] == '"3"'
    assert fresh.json()["state"] == {"a": 1, "b": 2, "c": 3}


async def test_a_full_read_sends_every_key_and_value_as_stored_in_byte_order(client, conn):
    """GET /state puts the entries' JSON together as text (sms.document_text): what came in comes
    back exactly — escapes, Unicode, numbers beyond a double, values of every kind, an empty
    collection — with the keys in byte order at the top and in each collection, the same bytes
    for the same version (read now or as a past version), and the same value as sms.document."""
    state = {
        "tasks": {"b": 1, "B": {"n": None}, 'q"uote\\d': [1, {"deep": {"é": "x"}}], "a.b": {}, "Z": [], "é": True},
        "empty": {},
        "list": [3, "two", {"one": 1}],
        "text": "line\nbreak \u2028 \U0001f600",
        "off": False,
        "none": None,
    }
    body = json.dumps(state)[:-1] + ', "counter": 123456789012345678.123456789012345678}'  # beyond a double
    state = json.loads(body, parse_float=Decimal)
    response = await client.post(URL, content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    first = await client.get(URL)
    assert json.loads(first.content, parse_float=Decimal)["state"] == state
    assert json.loads(first.content)["state"] == json.loads(await conn.fetchval("SELECT sms.document('t', 'f')::text"))
    read_back = json.loads(first.content, object_pairs_hook=lambda pairs: pairs)
    keys = dict(read_back)["state"]
    assert [key for key, _ in keys] == sorted(state, key=str.encode)
    assert [key for key, _ in dict(keys)["tasks"]] == sorted(state["tasks"], key=str.encode)
    assert (await client.get(URL)).content == first.content
    assert (await client.get(URL, params={"version": 1})).content == first.content  # as it was at version 1


async def test_write_responses_carry_the_new_etag(client):
    response = await client.post(f"{URL}/delta", json={"a": 1})
    assert response.json() == {
        "success": True,
        "version": 1,
        "delta_id": response.json()["delta_id"],
        "changed": ["a"],
        "duplicate": False,
    }
    assert response.headers["etag"] == '"1"'


# ---------------------------------------------------------------- full replacement


async def test_post_state_replaces_the_whole_state_as_one_delta(client, conn):
    await write(client, {"tasks": {"A": {"s": 1}, "B": {"s": 2}}, "keep": 1, "drop": "x", "metrics.ctr": 1})
    new = {"tasks": {"C": {"s": 3}}, "keep": 2, "fresh": {"deep": {}}, "list": [1, {"a": None}]}
    response = await client.post(URL, json=new, headers={"X-Actor": "admin"})
    assert response.status_code == 200, response.text
    result = response.json()
    assert (result["success"], result["version"]) == (True, 2)
    assert response.headers["etag"] == '"2"'
    assert (await read(client))["state"] == new
    rows = await log_rows(conn)
    assert [r["version"] for r in rows] == [1, 2]
    assert rows[1]["actor"] == "admin"
    assert sorted(rows[1]["paths"]) == ["drop", "fresh", "keep", "list", "metrics", "tasks"]
    unset = sorted(op["path"][0] for op in rows[1]["ops"] if op["op"] == "unset")
    assert unset == ["drop", "metrics"]


async def test_post_state_with_an_empty_object_clears_the_state(client):
    await write(client, {"a": 1, "tasks.T": 1})
    response = await client.post(URL, json={})
    assert response.status_code == 200
    assert response.json()["version"] == 2
    assert await read(client) == {"tenant_id": TENANT, "fsa_id": FSA, "version": 2, "state": {}}


async def test_post_state_refuses_what_is_not_an_object(client):
    await write(client, {"a": 1})
    for body in ([1, 2], "text", 5):
        assert_problem(await client.post(URL, json=body), 422, "invalid-delta")
    assert_problem(await client.post(URL, json={"$set": 1}), 422, "invalid-delta")
    assert (await read(client))["version"] == 1


# ---------------------------------------------------------------- validation


async def test_validate_without_a_state_returns_the_normalised_ops(client, conn):
    delta = {
        "tasks.T1.status": "DONE",
        "tags": {"$addToSet": "x"},
        "old": {"$pull": [1]},
        "log": {"$push": "e"},
        "$expect": {"tasks.T1.status": "OPEN", "lock": {"$exists": False}},
    }
    response = await client.post("/validate/delta", json=delta)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["success"], body["valid"]) == (True, True)
    assert sorted(body["ops"], key=lambda op: op["path"]) == [
        {"path": ["log"], "op": "push", "value": {"$each": ["e"], "$slice": None}},
        {"path": ["old"], "op": "remove", "value": [1]},
        {"path": ["tags"], "op": "add", "value": ["x"]},
        {"path": ["tasks", "T1", "status"], "op": "set", "value": "DONE"},
    ]
    assert sorted(body["expect"], key=lambda e: e["path"]) == [
        {"path": ["lock"], "exists": False},
        {"path": ["tasks", "T1", "status"], "value": "OPEN"},
    ]
    assert await conn.fetchval("SELECT count(*) FROM sms.states") == 0
    assert_problem(await client.post("/validate/delta", json={"a..b": 1}), 422, "invalid-delta")


async def test_validate_against_a_state_dry_runs_and_changes_nothing(client, conn, database_url):
    await write(client, {"n": 1, "tasks.T1.status": "OPEN"})
    before = await snapshot(conn)
    dry = "/validate/delta?tenant_id=t&fsa_id=f"
    async with listening(database_url) as feed:
        response = await client.post(dry, json={"n": {"$inc": 1}, "tasks.T2": {"s": 1}})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["valid"], body["applied"], body["success"]) == (True, False, True)
        assert (body["version"], body["current_version"]) == (2, 1)
        assert sorted(body["changed"]) == ["n", "tasks.T2"]

        problem = assert_problem(
            await client.post(dry, json={"n": 2, "$expect": {"tasks.T1.status": "DONE"}}), 409, "expectation-failed"
        )
        assert problem["current"] == {"tasks.T1.status": "OPEN"}
        problem = assert_problem(
            await client.post(dry, json={"n": 2}, headers={"If-Match": '"0"'}), 409, "version-conflict"
        )
        assert problem["current_version"] == 1
        problem = assert_problem(await client.post(dry, json={"n": {"$push": 1}}), 422, "type-mismatch")
        assert problem["path"] == "n"

        # a state never written stays unwritten
        response = await client.post("/validate/delta?tenant_id=t&fsa_id=never", json={"a": 1})
        assert (response.json()["version"], response.json()["current_version"]) == (1, 0)
        await feed.assert_silent()
    assert await snapshot(conn) == before
    assert await conn.fetchval("SELECT count(*) FROM sms.states WHERE fsa_id = 'never'") == 0


# ---------------------------------------------------------------- the log


async def test_deltas_pages_through_the_log_with_more(client):
    for i in range(5):
        await write(client, {"n": i}, params={"actor": f"bot{i}"})
    page = (await client.get(f"{URL}/deltas", params={"since": 0, "limit": 2})).json()
    assert [d["version"] for d in page["deltas"]] == [1, 2]
    assert (page["more"], page["version"], page["since"]) == (True, 5, 0)
    assert [d["actor"] for d in page["deltas"]] == ["bot0", "bot1"]
    assert page["deltas"][0]["ops"] == [{"path": ["n"], "op": "set", "value": 0}]
    page = (await client.get(f"{URL}/deltas", params={"since": 2, "limit": 2})).json()
    assert ([d["version"] for d in page["deltas"]], page["more"]) == ([3, 4], True)
    page = (await client.get(f"{URL}/deltas", params={"since": 4, "limit": 2})).json()
    assert ([d["version"] for d in page["deltas"]], page["more"]) == ([5], False)
    page = (await client.get(f"{URL}/deltas", params={"since": 5})).json()
    assert (page["deltas"], page["more"]) == ([], False)
    whole = (await client.get(f"{URL}/deltas")).json()
    assert [d["version"] for d in whole["deltas"]] == [1, 2, 3, 4, 5]
    assert (await client.get(f"{URL}/deltas", params={"limit": 0})).status_code == 400
    assert (await client.get(f"{URL}/deltas", params={"since": -1})).status_code == 400


# ---------------------------------------------------------------- JSON Patch and Merge Patch


async def test_json_patch_add_replace_remove_and_test(client):
    await write(client, {"tasks": {"T1": {"status": "OPEN", "tmp": 1}}, "tags": ["a"]})
    patch = [
        {"op": "test", "path": "/tasks/T1/status", "value": "OPEN"},
        {"op": "replace", "path": "/tasks/T1/status", "value": "DONE"},
        {"op": "add", "path": "/tasks/T2", "value": {"status": "NEW"}},
        {"op": "remove", "path": "/tasks/T1/tmp"},
        {"op": "add", "path": "/tags/-", "value": "b"},
        {"op": "add", "path": "/a.b~1c~0d", "value": 1},
    ]
    response = await client.post(f"{URL}/delta", json=patch, headers=JSON_PATCH)
    assert response.status_code == 200, response.text
    assert response.json()["version"] == 2
    assert (await read(client))["state"] == {
        "tasks": {"T1": {"status": "DONE"}, "T2": {"status": "NEW"}},
        "tags": ["a", "b"],
        "a.b/c~d": 1,
    }


async def test_json_patch_failures_apply_nothing(client):
    await write(client, {"tasks": {"T1": {"status": "OPEN"}}})
    cases = [
        ([{"op": "replace", "path": "/tasks/T9/status", "value": "DONE"}], 409, "expectation-failed"),
        ([{"op": "remove", "path": "/nope"}], 409, "expectation-failed"),
        (
            [{"op": "test", "path": "/tasks/T1/status", "value": "DONE"}, {"op": "add", "path": "/x", "value": 1}],
            409,
            "expectation-failed",
        ),
        ([{"op": "move", "from": "/tasks/T1", "path": "/tasks/T2"}], 422, "invalid-delta"),
        ([{"op": "copy", "from": "/tasks/T1", "path": "/tasks/T2"}], 422, "invalid-delta"),
        ({"op": "add", "path": "/x", "value": 1}, 422, "invalid-delta"),
    ]
    for patch, status, slug in cases:
        assert_problem(await client.post(f"{URL}/delta", json=patch, headers=JSON_PATCH), status, slug)
    state = await read(client)
    assert (state["version"], state["state"]) == (1, {"tasks": {"T1": {"status": "OPEN"}}})


async def test_merge_patch(client):
    await write(client, {"tasks": {"T1": {"status": "OPEN", "owner": "a"}, "T2": {}}, "gone": 1, "n": 1})
    patch = {
        "tasks": {"T1": {"owner": None, "status": "DONE"}, "T2": None, "T3": {"s": 1}},
        "gone": None,
        "n": 2,
        "x.y": {"k": 1},
    }
    response = await client.post(f"{URL}/delta", json=patch, headers=MERGE_PATCH)
    assert response.status_code == 200, response.text
    assert (await read(client))["state"] == {
        "tasks": {"T1": {"status": "DONE"}, "T3": {"s": 1}},
        "n": 2,
        "x.y": {"k": 1},
    }
    assert_problem(await client.post(f"{URL}/delta", json=[1], headers=MERGE_PATCH), 422, "invalid-delta")


# ---------------------------------------------------------------- metadata


async def test_original_clients_contract(client, conn):
    response = await client.post(
        f"{URL}/delta?actor=DesignBot&lineage_id=L1&pillar=design&aml_level=0",
        content=b'{"tasks.DESIGN_001.status": "DONE", "metrics.design_progress": {"$inc": 0.25}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["success"] is True
    [row] = await log_rows(conn)
    assert (row["actor"], row["lineage_id"]) == ("DesignBot", "L1")
    assert row["meta"] == {"pillar": "design", "aml_level": 0}  # the level its policies were checked at
    assert (await read(client))["state"] == {
        "tasks": {"DESIGN_001": {"status": "DONE"}},
        "metrics": {"design_progress": 0.25},
    }


async def test_actor_and_lineage_from_headers(client, conn):
    await write(client, {"a": 1}, headers={"X-Actor": "HeaderBot", "X-Lineage-Id": "span-9"})
    [row] = await log_rows(conn)
    assert (row["actor"], row["lineage_id"], row["trace_id"], row["meta"]) == ("HeaderBot", "span-9", None, {})
    log = (await client.get(f"{URL}/deltas")).json()["deltas"]
    assert (log[0]["actor"], log[0]["lineage_id"]) == ("HeaderBot", "span-9")


async def test_traceparent_fills_trace_parent_and_lineage(client, conn):
    trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    traceparent = f"00-{trace}-{parent}-01"
    await write(client, {"a": 1}, headers={"traceparent": traceparent})
    await write(client, {"b": 1}, headers={"traceparent": traceparent, "X-Lineage-Id": "mine"})
    rows = await log_rows(conn)
    assert [(r["trace_id"], r["parent_id"], r["lineage_id"]) for r in rows] == [
        (trace, parent, trace),
        (trace, parent, "mine"),
    ]
    response = await client.post(f"{URL}/delta", json={"c": 1}, headers={"traceparent": "not-a-trace"})
    assert_problem(response, 400, "malformed-request")
    assert len(await log_rows(conn)) == 2


# ---------------------------------------------------------------- ids in URLs


async def test_ids_with_encoded_characters_address_the_same_state_as_sql(client, conn):
    await write(client, {"a": 1}, url="/state/a%20b/%C3%A9t%C3%A9+1")
    assert await conn.fetchval("SELECT sms.document('a b', 'été+1')::text") == '{"a": 1}'
    await apply_delta(conn, {"b": 2}, tenant="a b", fsa="été+1")
    body = await read(client, "/state/a%20b/%C3%A9t%C3%A9+1")
    assert body == {"tenant_id": "a b", "fsa_id": "été+1", "version": 2, "state": {"a": 1, "b": 2}}


async def test_ids_with_percent_and_reserved_characters_over_a_real_socket(live_url, conn):
    # a real server decodes the path once (the in-process test client decodes it twice)
    ids = {"x%41": "x%2541", "q?y": "q%3Fy", "h#1": "h%231", "a b": "a%20b"}
    async with httpx.AsyncClient(base_url=live_url) as http:
        for fsa, encoded in ids.items():
            response = await http.post(f"/state/t/{encoded}/delta", json={"fsa": fsa})
            assert response.status_code == 200, (fsa, response.text)
            body = (await http.get(f"/state/t/{encoded}")).json()
            assert (body["fsa_id"], body["state"]) == (fsa, {"fsa": fsa})
    for fsa in ids:
        assert await conn.fetchval("SELECT sms.document('t', $1) ->> 'fsa'", fsa) == fsa


async def test_ids_with_a_slash_are_refused_and_never_misrouted(live_url, conn):
    # ids are single URL path segments: SQL refuses "/" in them, and an encoded %2F (which the
    # server decodes before routing) is refused rather than routed to another state or route
    with pytest.raises(asyncpg.PostgresError) as refused:
        await apply_delta(conn, {"k": "x"}, fsa="x/y")
    assert refused.value.sqlstate == "SM007"
    await apply_delta(conn, {"k": "x"}, fsa="x")
    async with httpx.AsyncClient(base_url=live_url) as http:
        deltas = await http.get("/state/t/x%2Fdeltas")
        replaced = await http.post("/state/t/x%2Fdelta", json={"k": "replaced"})
        nested = await http.get("/state/t/x%2Fy")
    assert_problem(deltas, 422, "invalid-id")
    assert_problem(replaced, 422, "invalid-id")
    assert nested.status_code == 404
    assert await document(conn, fsa="x") == {"k": "x"}


async def test_invalid_ids_are_refused(client):
    long = "x" * 129
    assert_problem(await client.post(f"/state/{long}/f/delta", json={"a": 1}), 422, "invalid-id")
    assert_problem(await client.get(f"/state/t/{long}"), 422, "invalid-id")
    assert_problem(await client.post("/state/t/a%01b/delta", json={"a": 1}), 422, "invalid-id")
    response = await client.post(f"{URL}/delta", json={"a": 1}, params={"actor": "a" * 129})
    assert_problem(response, 422, "invalid-id")
    assert (await read(client))["version"] == 0


async def test_delta_id_parameter_that_is_a_uuid_is_kept(client, conn):
    delta_id = uuid.uuid4()
    result = await write(client, {"a": 1}, params={"delta_id": str(delta_id)})
    assert result["delta_id"] == str(delta_id)
    [row] = await log_rows(conn)
    assert row["delta_id"] == str(delta_id)
