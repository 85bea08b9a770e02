"""Aliases of slice specs, configurable per state (DESIGN §5): the defaults, a state's own
aliases over HTTP, SQL and the client, their isolation between states and tenants, the summary
cache and the change feed reading through them, and bad input (400, nothing changes)."""

from __future__ import annotations

import json

import pytest
from helpers import apply_delta, assert_problem

from app.domain.change import Position
from state_memory_client import StateMemoryClient, ValidationError

T, F = "acme", "launch"
URL = f"/state/{T}/{F}"
DEFAULTS = {"task": "tasks", "metric": "metrics", "agent": "agents_online", "resource": "resources"}
SEED = {
    "tasks": {"DESIGN_1": {"status": "OPEN"}, "DESIGN_2": {"status": "DONE"}, "TEST_1": {"status": "OPEN"}},
    "jobs": {"DESIGN_9": {"status": "QUEUED"}},
    "metrics": {"ctr": 1},
}


@pytest.fixture
async def seeded(client):
    for tenant, fsa in ((T, F), (T, "other"), ("globex", F)):
        assert (await client.post(f"/state/{tenant}/{fsa}", json=SEED)).status_code == 200


async def aliases(client, url: str = URL) -> dict[str, str]:
    response = await client.get(f"{url}/aliases")
    assert response.status_code == 200, response.text
    return response.json()["aliases"]


async def put_alias(client, alias: str, collection: str, url: str = URL):
    return await client.put(f"{url}/aliases/{alias}", json={"collection": collection})


async def slice_of(client, spec: str, url: str = URL, **params) -> dict:
    response = await client.get(f"{url}/slice", params={"slice": spec, **params})
    assert response.status_code == 200, response.text
    return response.json()


async def test_every_state_starts_with_the_default_aliases(client):
    assert await aliases(client) == DEFAULTS
    assert await aliases(client, "/state/never/written") == DEFAULTS


async def test_a_states_own_alias_reads_its_collection(client, seeded):
    response = await put_alias(client, "Todo", "tasks")
    assert response.status_code == 200, response.text
    assert response.json() == {"tenant_id": T, "fsa_id": F, "aliases": {**DEFAULTS, "todo": "tasks"}}
    read = await slice_of(client, "TODO:design_*", k=1)
    assert read["slice"] == {"tasks": {"DESIGN_1": {"status": "OPEN"}}}
    assert (read["total"], read["truncated"]) == (2, True)
    assert "tasks (TODO:design_*): 1 of 2" in read["summary"]


async def test_aliases_belong_to_one_state(client, seeded):
    assert (await put_alias(client, "todo", "tasks")).status_code == 200
    for url in (f"/state/{T}/other", f"/state/globex/{F}"):
        assert await aliases(client, url) == DEFAULTS
        # there `todo` is no alias: the collection of that name, which does not exist
        read = await slice_of(client, "todo:*", url)
        assert (read["slice"], read["total"]) == ({}, 0)


async def test_a_default_alias_can_point_elsewhere_and_back(client, seeded):
    assert (await put_alias(client, "task", "jobs")).status_code == 200
    assert (await slice_of(client, "task:DESIGN_*"))["slice"] == {"jobs": {"DESIGN_9": {"status": "QUEUED"}}}
    removed = await client.delete(f"{URL}/aliases/task")
    assert removed.status_code == 200 and removed.json()["aliases"] == DEFAULTS
    assert set((await slice_of(client, "task:DESIGN_*"))["slice"]["tasks"]) == {"DESIGN_1", "DESIGN_2"}
    # removing an alias the state does not have changes nothing
    assert (await client.delete(f"{URL}/aliases/nothing")).json()["aliases"] == DEFAULTS


async def test_a_cached_slice_is_read_afresh_when_its_alias_changes(client, seeded):
    assert (await put_alias(client, "work", "tasks")).status_code == 200
    first = await slice_of(client, "work:*")
    again = await slice_of(client, "work:*")
    assert (first["cached"], again["cached"]) == (False, True)
    assert again["slice"] == first["slice"] and set(first["slice"]) == {"tasks"}

    assert (await put_alias(client, "work", "jobs")).status_code == 200
    moved = await slice_of(client, "work:*")
    assert moved["cached"] is False
    assert moved["slice"] == {"jobs": {"DESIGN_9": {"status": "QUEUED"}}}
    assert "jobs (work:*): 1 of 1" in moved["summary"] and "DESIGN_1" not in moved["summary"]


async def test_a_slice_read_before_its_alias_moved_is_never_served_after(client, seeded, conn):
    """A reader that read through the old alias stores its slice after the alias moved: the row is
    keyed by the aliases it was read under, so the next read does not find it."""
    assert (await put_alias(client, "work", "tasks")).status_code == 200
    await conn.execute("SELECT sms.act_for($1)", [T])
    stale = await conn.fetchval("SELECT sms.read_slice($1, $2, 'work:*')::text", T, F)
    assert (await put_alias(client, "work", "jobs")).status_code == 200
    await conn.execute("SELECT sms.store_slice_summary($1, $2, $3::jsonb, 'tasks of the old alias')", T, F, stale)

    read = await slice_of(client, "work:*")
    assert (read["cached"], read["slice"]) == (False, {"jobs": {"DESIGN_9": {"status": "QUEUED"}}})
    assert "old alias" not in read["summary"]


@pytest.mark.parametrize("alias", ["1abc", "a:b", "a.b", "a,b", "a b", "x" * 64, "é", "-a"])
async def test_an_invalid_alias_name_is_a_400_and_changes_nothing(client, seeded, alias):
    response = await put_alias(client, alias, "tasks")
    assert_problem(response, 400, "invalid-slice")
    assert await aliases(client) == DEFAULTS


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b'"tasks"',
        b"{}",
        b'{"collection": 5}',
        b'{"collection": null}',
        b'{"collection": "tasks", "more": 1}',
    ],
)
async def test_a_malformed_alias_body_is_a_400_and_changes_nothing(client, seeded, body):
    response = await client.put(f"{URL}/aliases/todo", content=body, headers={"content-type": "application/json"})
    assert_problem(response, 400, "malformed-request")
    assert await aliases(client) == DEFAULTS


@pytest.mark.parametrize("collection", ["", "a\x01b", "c" * 513])
async def test_an_invalid_collection_is_a_400_and_changes_nothing(client, seeded, collection):
    assert_problem(await put_alias(client, "todo", collection), 400, "invalid-slice")
    assert await aliases(client) == DEFAULTS


async def test_a_state_has_at_most_100_aliases_of_its_own(client, conn):
    await conn.execute("SELECT sms.set_alias($1, $2, 'a' || i, 'tasks') FROM generate_series(1, 100) i", T, F)
    assert_problem(await put_alias(client, "one_more", "tasks"), 400, "invalid-slice")
    assert len(await aliases(client)) == 100 + len(DEFAULTS)
    # changing one it has is no new alias
    assert (await put_alias(client, "a1", "jobs")).status_code == 200


async def test_changes_and_the_feed_filter_read_through_the_states_aliases(client, conn, db, seeded):
    assert (await put_alias(client, "todo", "tasks")).status_code == 200
    since = (await slice_of(client, "todo:*"))["version"]
    await apply_delta(conn, {"tasks.DESIGN_1.status": "DONE"}, tenant=T, fsa=F)
    await apply_delta(conn, {"jobs.DESIGN_9.status": "DONE"}, tenant=T, fsa=F)

    changes = (await client.get(f"{URL}/changes", params={"since": since, "slice": "todo:*"})).json()
    assert [c["path"] for c in changes["changes"]] == ["tasks.DESIGN_1.status"]

    # the tenant-wide feed parses the filter with each delta's own state's aliases
    await apply_delta(conn, {"tasks.DESIGN_1.status": "DONE"}, tenant=T, fsa="other")
    rows = await db.read_feed(T, None, Position(), ["todo:*"], 100)
    wanted = {(change.fsa_id, change.version): touches for change, _, (touches,) in rows}
    assert wanted[F, since + 1] is True  # tasks, through this state's alias
    assert wanted[F, since + 2] is False  # jobs
    assert wanted["other", 2] is False  # in "other", todo:* means a collection named todo


async def test_aliases_in_sql_as_over_http(conn):
    result = json.loads(await conn.fetchval("SELECT sms.set_alias('t', 'f', 'Todo', 'tasks')::text"))
    assert result == {**DEFAULTS, "todo": "tasks"}
    parts = json.loads(await conn.fetchval("SELECT sms.parse_slice('todo:*', sms.aliases_of('t', 'f'))::text"))
    assert parts[0]["collection"] == "tasks"
    # without a state's aliases: the defaults
    assert json.loads(await conn.fetchval("SELECT sms.parse_slice('todo:*')::text"))[0]["collection"] == "todo"
    assert json.loads(await conn.fetchval("SELECT sms.parse_slice('agent:*')::text"))[0]["collection"] == (
        "agents_online"
    )
    await conn.fetchval("SELECT sms.set_alias('t', 'f', 'todo', NULL)")
    assert json.loads(await conn.fetchval("SELECT sms.aliases_of('t', 'f')::text")) == DEFAULTS


async def test_the_client_sets_reads_and_removes_aliases(live_url):
    async with StateMemoryClient(live_url) as sms:
        await sms.replace_state(T, F, SEED)
        assert await sms.get_aliases(T, F) == DEFAULTS
        assert await sms.set_alias(T, F, "todo", "tasks") == {**DEFAULTS, "todo": "tasks"}
        view = await sms.get_slice(T, F, "todo:TEST_*")
        assert view.tasks == {"TEST_1": {"status": "OPEN"}}
        with pytest.raises(ValidationError):
            await sms.set_alias(T, F, "not an alias", "tasks")
        assert await sms.remove_alias(T, F, "todo") == DEFAULTS
