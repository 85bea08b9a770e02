"""Listing a tenant's states (GET /state/{tenant}, sms.list_states): every state once, in id
order, with its version, entry count, size and times; pages that join up; a prefix; another
tenant's states never seen; bad paging input refused with nothing listed."""

from __future__ import annotations

import json

import pytest
from helpers import apply_delta, assert_problem
from test_auth import auth_on, bearer, make_key

T, OTHER = "acme", "globex"


async def seed(conn) -> list[str]:
    """Seven states of T (one written twice), one of OTHER; the ids of T's, in order."""
    ids = ["run-1", "run-10", "run-2", "scratch.a", "scratch.b", "team x", "Zeta"]
    for fsa in ids:
        await apply_delta(conn, {"tasks": {"T1": {"status": "OPEN"}}, "note": fsa}, T, fsa)
    await apply_delta(conn, {"note": "again"}, T, "run-2")
    await apply_delta(conn, {"secret": 1}, OTHER, "run-1")
    return ids


async def database_order(conn, ids: list[str]) -> list[str]:
    return [row[0] for row in await conn.fetch("SELECT unnest($1::text[]) AS id ORDER BY id", ids)]


async def test_lists_every_state_of_the_tenant_with_its_version_size_and_times(client, conn):
    ids = await database_order(conn, await seed(conn))
    response = await client.get(f"/state/{T}")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tenant_id"] == T and body["next"] is None
    assert [s["fsa_id"] for s in body["states"]] == ids
    by_id = {s["fsa_id"]: s for s in body["states"]}
    assert by_id["run-2"]["version"] == 2 and by_id["run-1"]["version"] == 1
    rows = {r["fsa_id"]: r for r in await conn.fetch("SELECT * FROM sms.states WHERE tenant_id = $1", T)}
    for fsa, listed in by_id.items():
        assert listed["entries"] == rows[fsa]["entry_count"] > 0
        assert listed["size_bytes"] == rows[fsa]["content_bytes"] > 0
        assert listed["updated_at"] >= listed["created_at"]


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7])
async def test_pages_join_up_to_every_state_once(client, conn, limit):
    ids = await database_order(conn, await seed(conn))
    seen: list[str] = []
    after = ""
    while True:
        response = await client.get(f"/state/{T}", params={"limit": limit, "after": after})
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["states"]) <= limit
        seen += [s["fsa_id"] for s in page["states"]]
        if page["next"] is None:
            break
        assert page["next"] == page["states"][-1]["fsa_id"]
        after = page["next"]
    assert seen == ids


async def test_a_prefix_lists_only_the_states_whose_id_starts_with_it(client, conn):
    await seed(conn)
    response = await client.get(f"/state/{T}", params={"prefix": "scratch."})
    assert [s["fsa_id"] for s in response.json()["states"]] == ["scratch.a", "scratch.b"]
    response = await client.get(f"/state/{T}", params={"prefix": "run-1"})
    assert [s["fsa_id"] for s in response.json()["states"]] == ["run-1", "run-10"]
    response = await client.get(f"/state/{T}", params={"prefix": "nothing%"})
    assert response.json() == {"tenant_id": T, "states": [], "next": None}


async def test_a_tenant_with_no_state_lists_none(client):
    response = await client.get("/state/nobody")
    assert response.status_code == 200
    assert response.json() == {"tenant_id": "nobody", "states": [], "next": None}


async def test_sql_callers_list_the_same(conn, client):
    await seed(conn)
    in_sql = json.loads(await conn.fetchval("SELECT sms.list_states($1, '', '', 2)::text", T))
    over_http = (await client.get(f"/state/{T}", params={"limit": 2})).json()
    assert in_sql == over_http
    assert in_sql["next"] is not None


async def test_another_tenants_states_are_never_listed(conn, db, make_client):
    """A key of T lists T's states; asking for OTHER's is the 404 of anything not there, and a key
    of both lists each tenant's own."""
    await seed(conn)
    own = await make_key(db, [T], "read")
    both = await make_key(db, [T, OTHER], "read")
    async with make_client(**auth_on()) as http:
        listed = (await http.get(f"/state/{T}", headers=bearer(own))).json()
        assert all(s["fsa_id"] != "secret" for s in listed["states"]) and len(listed["states"]) == 7
        assert_problem(await http.get(f"/state/{OTHER}", headers=bearer(own)), 404, "not-found")
        other = (await http.get(f"/state/{OTHER}", headers=bearer(both))).json()
        assert [s["fsa_id"] for s in other["states"]] == ["run-1"] and other["tenant_id"] == OTHER


@pytest.mark.parametrize(
    ("params", "named"),
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"prefix": "p" * 257}, "prefix"),
        ({"after": "a" * 257}, "after"),
        ({"prefix": "a\x00"}, "0x00"),
    ],
)
async def test_bad_paging_input_is_a_400_naming_it(client, conn, params, named):
    await seed(conn)
    response = await client.get(f"/state/{T}", params=params)
    body = assert_problem(response, 400, "malformed-request")
    assert named in body["detail"], body
