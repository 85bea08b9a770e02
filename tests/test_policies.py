"""Policies (DESIGN §10, issue 9): rules on path globs, evaluated by the merge itself (sms.apply_ops)
on the values a delta produces. Each rule kind at its boundary, on missing paths, under every
operator and write path (none walks around a rule), what a refusal is (a 422 listing each broken
rule; nothing applied, no version used, no NOTIFY, a row in sms.refusals and never one in the log),
many writers spending one budget, the original service's preset, tenant defaults against a state's
own rules, a cost that does not grow with unrelated rules, and globs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
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
    logged_plans,
    plan_nodes,
    run_sms,
    service_settings,
    snapshot,
    version,
)

URL = "/state/t/f"
OTHER = "/state/t/g"
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}
KITKATS = {"path": "resources.inventory.*", "min": 0}
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.fixture
def settings(database_url: str):
    """The usual test service with a smaller pool: the concurrency tests open 100 HTTP clients on a
    server that other test runs share (100 connections)."""
    return service_settings(database_url, pool_min_size=1, pool_max_size=30)


# ---------------------------------------------------------------- helpers


async def put_rules(client, rules: list[dict[str, Any]], url: str = URL, **kwargs: Any) -> dict[str, Any]:
    """PUT a state's own rules; the answer."""
    response = await client.put(f"{url}/policies", json={"rules": rules}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


async def put_defaults(client, rules: list[dict[str, Any]], tenant: str = TENANT, **kwargs: Any) -> dict[str, Any]:
    """PUT a tenant's default rules; the answer."""
    response = await client.put(f"/tenants/{tenant}/policies", json={"rules": rules}, **kwargs)
    assert response.status_code == 200, response.text
    return response.json()


async def accepted(client, delta: Any, url: str = URL, **kwargs: Any) -> dict[str, Any]:
    """POST a delta that must be applied; its result."""
    response = await client.post(f"{url}/delta", json=delta, **kwargs)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    return body


async def refused(client, delta: Any, url: str = URL, **kwargs: Any) -> dict[str, Any]:
    """POST a delta that a policy must refuse; the 422 problem's body."""
    return policy_problem(await client.post(f"{url}/delta", json=delta, **kwargs))


def policy_problem(response: Any) -> dict[str, Any]:
    """A 422 policy-violation with its violations, the state's version and the refusal's id."""
    body = assert_problem(response, 422, "policy-violation")
    assert body["violations"], body
    for violation in body["violations"]:
        assert {"path", "rule", "limit", "message"} <= set(violation), violation
    assert isinstance(body["current_version"], int)
    uuid.UUID(body["refusal_id"])
    return body


def broken(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(path, rule) of each violation a refusal lists."""
    return [(v["path"], v["rule"]) for v in body["violations"]]


async def read_state(client, url: str = URL) -> Any:
    response = await client.get(url)
    assert response.status_code == 200, response.text
    return response.json()["state"]


async def set_policy(
    conn: asyncpg.Connection,
    rules: list[dict[str, Any]],
    tenant: str = TENANT,
    fsa: str | None = FSA,
    actor: str | None = None,
) -> Any:
    """sms.set_policy as the owner (a psql user); fsa None sets the tenant's defaults."""
    text = await conn.fetchval(
        "SELECT sms.set_policy($1, $2, $3::jsonb, $4)::text", tenant, fsa, json.dumps(rules), actor
    )
    return json.loads(text)


async def refusals(conn: asyncpg.Connection, tenant: str = TENANT, fsa: str = FSA) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT refusal_id::text, version, delta_id::text, actor, lineage_id, trace_id, aml_level,
                  meta::text, ops::text, violations::text
             FROM sms.refusals WHERE tenant_id = $1 AND fsa_id = $2 ORDER BY refused_at""",
        tenant,
        fsa,
    )
    return [
        {
            **dict(r),
            "meta": json.loads(r["meta"]),
            "ops": json.loads(r["ops"]),
            "violations": json.loads(r["violations"]),
        }
        for r in rows
    ]


# ---------------------------------------------------------------- each rule kind at its boundary


async def test_min_accepts_the_minimum_and_refuses_a_cent_below(client, conn):
    await put_rules(client, [{"path": "cash", "min": 10}])
    await accepted(client, {"cash": 10})
    before = await snapshot(conn)
    body = await refused(client, {"cash": 9.99})
    [violation] = body["violations"]
    assert (violation["path"], violation["rule"], violation["value"], violation["limit"]) == ("cash", "min", 9.99, 10)
    assert "below the minimum" in violation["message"]
    assert broken(await refused(client, {"cash": "plenty"})) == [("cash", "min")]  # no number is at least 10
    assert await snapshot(conn) == before


async def test_max_accepts_the_maximum_and_refuses_a_cent_above(client, conn):
    await put_rules(client, [{"path": "load", "max": 100}])
    await accepted(client, {"load": 100})
    before = await snapshot(conn)
    [violation] = (await refused(client, {"load": 100.01}))["violations"]
    assert (violation["path"], violation["rule"], violation["value"], violation["limit"]) == (
        "load",
        "max",
        100.01,
        100,
    )
    assert "above the maximum" in violation["message"]
    assert broken(await refused(client, {"load": [1]})) == [("load", "max")]
    assert await snapshot(conn) == before


async def test_enum_accepts_its_values_only(client, conn):
    await put_rules(client, [{"path": "phase", "enum": ["TODO", "DONE", 3]}])
    await accepted(client, {"phase": "DONE"})
    await accepted(client, {"phase": 3})
    before = await snapshot(conn)
    for bad in ("done", "3", 4, True):
        [violation] = (await refused(client, {"phase": bad}))["violations"]
        assert (violation["rule"], violation["value"], violation["limit"]) == ("enum", bad, ["TODO", "DONE", 3])
    assert await snapshot(conn) == before


@pytest.mark.parametrize(
    ("kind", "good", "bad"),
    [
        ("string", "x", 1),
        ("number", 1.5, "1.5"),
        ("integer", 3, 3.5),
        ("integer", -7, "3"),
        ("boolean", False, 0),
        ("object", {"a": 1}, [1]),
        ("array", [1], {"a": 1}),
    ],
)
async def test_type_accepts_its_type_and_refuses_any_other(client, conn, kind, good, bad):
    await put_rules(client, [{"path": "v", "type": kind}])
    await accepted(client, {"v": {"$set": good}})
    before = await snapshot(conn)
    [violation] = (await refused(client, {"v": {"$set": bad}}))["violations"]
    assert (violation["path"], violation["rule"], violation["value"], violation["limit"]) == ("v", "type", bad, kind)
    assert await snapshot(conn) == before


async def test_required_value_may_change_but_neither_it_nor_its_parent_may_be_removed(client, conn):
    """`required`: an existing value may not be removed — by unsetting it, its member or its whole
    collection, or by replacing its member with one that lacks it."""
    await put_rules(client, [{"path": "tasks.*.owner", "required": True}])
    await accepted(client, {"tasks.T1": {"$set": {"owner": "ann", "status": "TODO"}}})
    await accepted(client, {"tasks.T1.owner": "bob"})  # changing it is fine
    await accepted(client, {"tasks.T2": {"$set": {"status": "TODO"}}})  # one that never had it is fine
    before = await snapshot(conn)
    for delta in (
        {"tasks.T1.owner": {"$unset": True}},
        {"tasks.T1": {"$unset": True}},
        {"tasks": {"$unset": True}},  # the whole collection
        {"tasks.T1": {"$set": {"status": "DONE"}}},  # the member replaced without the key
        {"tasks": {"$set": {"T1": {"status": "DONE"}}}},
        {"tasks.T1": {"$merge": {"owner": None}}},
    ):
        body = await refused(client, delta)
        [violation] = body["violations"]
        assert (violation["path"], violation["rule"]) == ("tasks.T1.owner", "required"), delta
        assert "required" in violation["message"]
    assert await snapshot(conn) == before


async def test_immutable_may_be_set_once_and_set_again_to_the_same_value(client, conn):
    """`immutable`: the first set and a set to the same value pass; a change or a removal does not."""
    await put_rules(client, [{"path": "tasks.*.created_by", "immutable": True}])
    await accepted(client, {"tasks.T1.created_by": "ann"})  # the first time
    await accepted(client, {"tasks.T1.created_by": "ann"})  # the same value again
    await accepted(client, {"tasks.T1.status": "DONE"})  # its siblings are free
    before = await snapshot(conn)
    for delta in (
        {"tasks.T1.created_by": "bob"},
        {"tasks.T1": {"$set": {"created_by": "bob", "status": "DONE"}}},
        {"tasks.T1.created_by": {"$unset": True}},
        {"tasks": {"$unset": True}},
    ):
        [violation] = (await refused(client, delta))["violations"]
        assert (violation["path"], violation["rule"]) == ("tasks.T1.created_by", "immutable"), delta
    assert await snapshot(conn) == before
    assert (await read_state(client))["tasks"]["T1"] == {"created_by": "ann", "status": "DONE"}


async def test_max_change_allows_exactly_n_either_way_and_nothing_more(client, conn):
    """`max_change: 10`: a change of exactly 10 either way passes, anything more is refused; an
    absent value counts as 0 (setting one, removing one)."""
    await put_rules(client, [{"path": "counters.*", "max_change": 10}])
    await accepted(client, {"counters.a": 10})  # absent counts as 0: a change of exactly 10
    await accepted(client, {"counters.a": {"$inc": 10}})
    await accepted(client, {"counters.a": {"$inc": -10}})
    await accepted(client, {"counters.a": 0})
    await accepted(client, {"counters.a": {"$inc": 10}})
    before = await snapshot(conn)
    for delta, change in (
        ({"counters.a": {"$inc": 11}}, 11),
        ({"counters.a": {"$inc": -11}}, -11),
        ({"counters.a": {"$inc": 10.01}}, 10.01),
        ({"counters.a": 21}, 11),
        ({"counters.b": 11}, 11),  # from absent
    ):
        [violation] = (await refused(client, delta))["violations"]
        assert (violation["rule"], violation["value"], violation["limit"]) == ("max_change", change, 10), delta
        assert "more than 10" in violation["message"]
    assert await snapshot(conn) == before
    await accepted(client, {"counters.a": {"$inc": 10}})  # 20
    [violation] = (await refused(client, {"counters.a": {"$unset": True}}))["violations"]  # to absent: by -20
    assert (violation["rule"], violation["value"]) == ("max_change", -20)
    await accepted(client, {"counters.a": {"$inc": -10}})
    await accepted(client, {"counters.a": {"$unset": True}})  # 10 to absent: by exactly -10


async def test_max_change_refuses_any_change_that_is_not_numeric(client, conn):
    await put_rules(client, [{"path": "level", "max_change": 1000}])
    await accepted(client, {"level": 5})
    before = await snapshot(conn)
    for delta in ({"level": "high"}, {"level": {"$set": {"n": 5}}}, {"level": True}):
        [violation] = (await refused(client, delta))["violations"]
        assert (violation["path"], violation["rule"], violation["limit"]) == ("level", "max_change", 1000)
        assert "not numeric" in violation["message"]
    assert await snapshot(conn) == before


async def test_aml_below_binds_only_levels_below_it_and_no_level_counts_as_0(client, conn):
    """`aml_below: 4` binds levels 0..3 only; a request with no level counts as level 0."""
    await put_rules(client, [{"path": "cash", "max_change": 1000, "aml_below": 4}])
    await accepted(client, {"cash": 5000}, params={"aml_level": 4})  # level 4 is not below 4
    before = await snapshot(conn)
    body = await refused(client, {"cash": {"$inc": -1001}}, params={"aml_level": 3})
    [violation] = body["violations"]
    assert (violation["path"], violation["rule"], violation["value"], violation["limit"]) == (
        "cash",
        "max_change",
        -1001,
        1000,
    )
    assert (violation["aml_level"], violation["aml_below"]) == (3, 4)
    assert violation["message"].startswith("AML level 3 is below 4")
    [unlevelled] = (await refused(client, {"cash": {"$inc": -1001}}))["violations"]
    assert (unlevelled["aml_level"], unlevelled["aml_below"]) == (0, 4)
    assert await snapshot(conn) == before
    await accepted(client, {"cash": {"$inc": -1000}}, params={"aml_level": 3})  # within the limit
    await accepted(client, {"cash": {"$inc": -1001}}, params={"aml_level": 4})
    await accepted(client, {"cash": {"$inc": 5000}}, params={"aml_level": 9})
    assert (await read_state(client))["cash"] == 7999
    assert [r["aml_level"] for r in await refusals(conn)] == [3, None]


# ---------------------------------------------------------------- missing paths


async def test_inc_on_a_missing_path_starts_at_0_under_a_min_rule(client, conn):
    await put_rules(client, [{"path": "stock.*", "min": 0}])
    [violation] = (await refused(client, {"stock.apples": {"$inc": -1}}))["violations"]
    assert (violation["path"], violation["rule"], violation["value"]) == ("stock.apples", "min", -1)
    assert await snapshot(conn) == (0, [], {})
    assert (await accepted(client, {"stock.apples": {"$inc": 1}}))["version"] == 1
    assert await document(conn) == {"stock": {"apples": 1}}


async def test_unsetting_a_missing_path_changes_nothing_and_passes_every_rule(client, conn):
    """`$unset` of what is not there changes nothing, so no rule (required, immutable, bounds) refuses it."""
    rules = [
        {"path": "a", "required": True},
        {"path": "b", "immutable": True},
        {"path": "c", "min": 0, "max": 1, "enum": [0], "type": "integer", "max_change": 0},
        {"path": "d.**", "required": True},
    ]
    await put_rules(client, rules)
    await accepted(
        client, {"a": {"$unset": True}, "b": {"$unset": True}, "c": {"$unset": True}, "d.e": {"$unset": True}}
    )
    assert await document(conn) == {}
    assert await refusals(conn) == []


async def test_min_max_enum_and_type_pass_a_value_the_delta_removes(client, conn):
    """min, max, enum and type constrain a value that is there; removing it is `required`'s business."""
    await accepted(client, {"cash": 5, "status": "TODO", "name": "x"})
    await put_rules(
        client,
        [
            {"path": "cash", "min": 0, "max": 10},
            {"path": "status", "enum": ["TODO"]},
            {"path": "name", "type": "string"},
        ],
    )
    await accepted(client, {"cash": {"$unset": True}, "status": {"$unset": True}, "name": {"$unset": True}})
    assert await document(conn) == {}


# ---------------------------------------------------------------- every operator and write path


async def test_inc_past_a_min_is_refused_and_down_to_it_accepted(client, conn):
    await put_rules(client, [{"path": "cash", "min": 0}])
    await accepted(client, {"cash": 10})
    [violation] = (await refused(client, {"cash": {"$inc": -10.5}}))["violations"]
    assert violation["value"] == -0.5
    await accepted(client, {"cash": {"$inc": -10}})
    assert await document(conn) == {"cash": 0}


async def test_max_and_min_operators_cannot_pass_the_bounds(client, conn):
    """`$max`/`$min` are checked on the value they leave."""
    await put_rules(client, [{"path": "gauge", "min": 0, "max": 100}])
    await accepted(client, {"gauge": {"$max": 50}})  # on a missing path: set to 50
    before = await snapshot(conn)
    assert broken(await refused(client, {"gauge": {"$max": 101}})) == [("gauge", "max")]
    assert broken(await refused(client, {"gauge": {"$min": -1}})) == [("gauge", "min")]
    assert await snapshot(conn) == before
    await accepted(client, {"gauge": {"$max": 100}})
    await accepted(client, {"gauge": {"$min": 0}})
    assert (await document(conn))["gauge"] == 0


async def test_merge_into_a_guarded_member_is_refused(client, conn):
    await put_rules(client, [KITKATS])
    await accepted(client, {"resources.inventory": {"$merge": {"kitkats": 3, "mars": 2}}})
    before = await snapshot(conn)
    for delta in (
        {"resources.inventory": {"$merge": {"kitkats": -1}}},
        {"resources": {"$merge": {"inventory": {"kitkats": -1}}}},
        {"resources.inventory": {"$merge": {"mars": 1, "kitkats": -1}}},
    ):
        [violation] = (await refused(client, delta))["violations"]
        assert (violation["path"], violation["rule"], violation["value"]) == ("resources.inventory.kitkats", "min", -1)
    assert await snapshot(conn) == before
    await accepted(client, {"resources.inventory": {"$merge": {"kitkats": 0}}})
    assert await document(conn) == {"resources": {"inventory": {"kitkats": 0, "mars": 2}}}


async def test_setting_a_whole_collection_or_parent_is_checked_member_by_member(client, conn):
    """A rule on `resources.inventory.*` holds for a set of `resources` or `resources.inventory`."""
    await put_rules(client, [KITKATS])
    await accepted(client, {"resources.inventory.kitkats": 3})
    before = await snapshot(conn)
    for delta in (
        {"resources.inventory": {"$set": {"kitkats": -1}}},
        {"resources": {"$set": {"inventory": {"kitkats": -1}}}},
        {"resources": {"inventory": {"kitkats": -1}}},  # nested form
        {"resources.inventory.kitkats": -1},
    ):
        [violation] = (await refused(client, delta))["violations"]
        assert (violation["path"], violation["rule"], violation["value"]) == ("resources.inventory.kitkats", "min", -1)
    assert await snapshot(conn) == before


async def test_array_operators_are_checked_on_the_array_they_produce(client, conn):
    """`$push`, `$add` and `$remove` change the array they touch: an immutable array may not change,
    and creating one where a string must be is a type violation."""
    await put_rules(
        client,
        [
            {"path": "tags", "immutable": True},
            {"path": "label", "type": "string"},
        ],
    )
    await accepted(client, {"tags": {"$add": ["a"]}})
    before = await snapshot(conn)
    for delta, rule in (
        ({"tags": {"$push": "b"}}, ("tags", "immutable")),
        ({"tags": {"$add": ["b"]}}, ("tags", "immutable")),
        ({"tags": {"$remove": ["a"]}}, ("tags", "immutable")),
        ({"label": {"$push": "x"}}, ("label", "type")),  # creates an array where a string must be
        ({"label": {"$add": ["x"]}}, ("label", "type")),
    ):
        assert broken(await refused(client, delta)) == [rule], delta
    assert await snapshot(conn) == before
    await accepted(client, {"tags": {"$add": ["a"]}, "tags2": {"$push": 1}})  # adding what is there changes nothing


async def test_json_patch_cannot_walk_around_a_rule(client, conn):
    await put_rules(client, [KITKATS, {"path": "owner", "required": True}])
    await accepted(client, {"resources.inventory.kitkats": 3, "owner": "ann"})
    before = await snapshot(conn)
    for patch, where in (
        (
            [{"op": "replace", "path": "/resources/inventory/kitkats", "value": -1}],
            ("resources.inventory.kitkats", "min"),
        ),
        (
            [{"op": "add", "path": "/resources/inventory", "value": {"kitkats": -1}}],
            ("resources.inventory.kitkats", "min"),
        ),
        (
            [{"op": "add", "path": "/resources", "value": {"inventory": {"kitkats": -2}}}],
            ("resources.inventory.kitkats", "min"),
        ),
        ([{"op": "remove", "path": "/owner"}], ("owner", "required")),
    ):
        response = await client.post(f"{URL}/delta", json=patch, headers=JSON_PATCH)
        assert broken(policy_problem(response)) == [where], patch
    assert await snapshot(conn) == before


async def test_merge_patch_cannot_walk_around_a_rule(client, conn):
    await put_rules(client, [KITKATS, {"path": "owner", "required": True}])
    await accepted(client, {"resources.inventory.kitkats": 3, "owner": "ann"})
    before = await snapshot(conn)
    for patch, where in (
        ({"resources": {"inventory": {"kitkats": -1}}}, ("resources.inventory.kitkats", "min")),
        ({"resources": {"inventory": {"twix": -1}}}, ("resources.inventory.twix", "min")),
        ({"owner": None}, ("owner", "required")),
    ):
        response = await client.post(f"{URL}/delta", json=patch, headers=MERGE_PATCH)
        assert broken(policy_problem(response)) == [where], patch
    assert await snapshot(conn) == before


async def test_replacing_the_state_cannot_walk_around_a_rule(client, conn):
    await put_rules(client, [KITKATS, {"path": "owner", "required": True}])
    await accepted(client, {"resources.inventory.kitkats": 3, "owner": "ann"})
    before = await snapshot(conn)
    body = policy_problem(await client.post(URL, json={"owner": "ann", "resources": {"inventory": {"kitkats": -1}}}))
    assert broken(body) == [("resources.inventory.kitkats", "min")]
    body = policy_problem(await client.post(URL, json={"resources": {"inventory": {"kitkats": 3}}}))
    assert broken(body) == [("owner", "required")]
    assert await snapshot(conn) == before
    response = await client.post(URL, json={"owner": "bob", "resources": {"inventory": {"kitkats": 0}}})
    assert response.status_code == 200, response.text


async def test_rollback_to_a_version_that_breaks_a_later_rule_is_refused(client, conn):
    """A rollback is a delta like any other: it may not restore a value a rule set since forbids."""
    await accepted(client, {"cash": -5})  # version 1: before any rule
    await accepted(client, {"cash": 10})
    await put_rules(client, [{"path": "cash", "min": 0}])
    before = await snapshot(conn)
    response = await client.post(f"{URL}/rollback", params={"to_version": 1})
    [violation] = policy_problem(response)["violations"]
    assert (violation["path"], violation["rule"], violation["value"]) == ("cash", "min", -5)
    assert await snapshot(conn) == before
    [refusal] = await refusals(conn)
    assert refusal["meta"]["rollback_to"] == 1


async def test_a_heartbeat_is_refused_under_an_aml_rule_that_binds_its_level(client, conn):
    await put_rules(client, [{"path": "**", "aml_below": 2, "max_change": 0}])
    before = await snapshot(conn)
    response = await client.post("/agents/t/f/bot-1/heartbeat", params={"aml_level": 1})
    [violation] = policy_problem(response)["violations"]
    assert (violation["path"], violation["rule"], violation["aml_level"]) == ("agents_online.bot-1", "max_change", 1)
    assert "AML" in violation["message"]
    assert await snapshot(conn) == before
    response = await client.post("/agents/t/f/bot-1/heartbeat", params={"aml_level": 2})
    assert response.status_code == 200, response.text
    assert list((await document(conn))["agents_online"]) == ["bot-1"]


async def test_sql_callers_get_a_refusal_returned_and_recorded(conn):
    """sms.apply_delta as the owner (psql): the refusal is returned, not raised, so its record commits."""
    await set_policy(conn, [{"path": "cash", "min": 0, "name": "no overdraft"}])
    await apply_delta(conn, {"cash": 10})
    before = await snapshot(conn)
    result = await apply_delta(
        conn, {"cash": {"$inc": -11}}, p_actor="analyst", p_lineage_id="L-sql", p_meta={"aml_level": 3}
    )
    assert (result["success"], result["refused"], result["error"], result["version"]) == (
        False,
        True,
        "policy-violation",
        1,
    )
    assert result["message"].startswith("policy violation:")
    [violation] = result["violations"]
    assert violation == {
        "path": "cash",
        "rule": "min",
        "value": -1,
        "limit": 0,
        "name": "no overdraft",
        "message": violation["message"],
    }
    assert await snapshot(conn) == before
    [refusal] = await refusals(conn)
    assert refusal["refusal_id"] == result["refusal_id"]
    assert (refusal["actor"], refusal["lineage_id"], refusal["aml_level"], refusal["version"]) == (
        "analyst",
        "L-sql",
        3,
        1,
    )
    assert refusal["violations"] == result["violations"]
    assert refusal["ops"] == [{"path": ["cash"], "op": "inc", "value": -11}]


async def test_a_dry_run_reports_the_refusal_and_records_nothing(client, conn):
    """POST /validate/delta answers the 422 the delta would meet; the dry run records no refusal."""
    await put_rules(client, [{"path": "cash", "min": 0}])
    await accepted(client, {"cash": 10})
    before = await snapshot(conn)
    response = await client.post(
        "/validate/delta", params={"tenant_id": TENANT, "fsa_id": FSA}, json={"cash": {"$inc": -11}}
    )
    assert broken(policy_problem(response)) == [("cash", "min")]
    assert await snapshot(conn) == before
    assert await refusals(conn) == []


# ---------------------------------------------------------------- what a refusal is


async def test_a_refusal_applies_nothing_uses_no_version_and_notifies_nobody(client, conn, database_url):
    """Nothing of a refused delta is applied (its unguarded paths neither), no version is used and
    nothing is notified; the next accepted delta gets the next version."""
    await put_rules(client, [{"path": "cash", "min": 0}])
    await accepted(client, {"cash": 10, "note": "kept"})
    async with listening(database_url) as feed:
        before = await snapshot(conn)
        body = await refused(client, {"cash": {"$inc": -11}, "note": "changed", "extra": 1})
        assert body["current_version"] == 1
        assert await snapshot(conn) == before
        await feed.assert_silent()
        assert (await accepted(client, {"cash": {"$inc": -10}}))["version"] == 2
        assert (await feed.next())["version"] == 2
        await feed.assert_silent()
    assert await log_versions(conn) == [1, 2]
    assert await document(conn) == {"cash": 0, "note": "kept"}


async def test_a_refusal_is_recorded_with_its_actor_lineage_level_ops_and_rules_never_in_the_log(client, conn):
    """sms.refusals keeps who, where, at which level, what and why; sms.deltas never has it."""
    await put_rules(client, [{"path": "cash", "min": 0, "name": "no overdraft"}])
    await accepted(client, {"cash": 10})
    delta_id = str(uuid.uuid4())
    body = await refused(
        client,
        {"cash": {"$inc": -11}},
        params={"actor": "spender", "lineage_id": "L7", "aml_level": 2, "delta_id": delta_id, "pillar": "ops"},
        headers={"traceparent": f"00-{TRACE_ID}-00f067aa0ba902b7-01"},
    )
    [violation] = body["violations"]
    assert violation["name"] == "no overdraft"
    [refusal] = await refusals(conn)
    assert refusal["refusal_id"] == body["refusal_id"]
    assert (refusal["version"], refusal["delta_id"], refusal["actor"], refusal["lineage_id"], refusal["aml_level"]) == (
        1,
        delta_id,
        "spender",
        "L7",
        2,
    )
    assert refusal["trace_id"] == TRACE_ID
    assert refusal["meta"] == {"pillar": "ops", "aml_level": 2}
    assert refusal["ops"] == [{"path": ["cash"], "op": "inc", "value": -11}]
    assert refusal["violations"] == body["violations"]
    assert await conn.fetchval("SELECT count(*) FROM sms.deltas WHERE delta_id = $1::uuid", delta_id) == 0
    assert [row["actor"] for row in await log_rows(conn)] == [None]


async def test_a_delta_breaking_two_guarded_paths_lists_both(client, conn):
    await put_rules(client, [{"path": "cash", "min": 0}, {"path": "tasks.*.status", "enum": ["TODO", "DONE"]}])
    before = await snapshot(conn)
    body = await refused(client, {"cash": -1, "tasks.T1.status": "LOST", "free": 1})
    assert broken(body) == [("cash", "min"), ("tasks.T1.status", "enum")]
    by_path = {v["path"]: v for v in body["violations"]}
    assert (by_path["cash"]["value"], by_path["cash"]["limit"]) == (-1, 0)
    assert (by_path["tasks.T1.status"]["value"], by_path["tasks.T1.status"]["limit"]) == ("LOST", ["TODO", "DONE"])
    assert "and 1 more" in body["detail"]
    assert await snapshot(conn) == before


async def test_one_value_breaking_two_rules_lists_both(client, conn):
    await put_rules(client, [{"path": "cash", "min": 0}, {"path": "cash", "max_change": 100}])
    await accepted(client, {"cash": 50})
    body = await refused(client, {"cash": {"$inc": -200}})
    assert broken(body) == [("cash", "max_change"), ("cash", "min")]


async def test_a_retry_of_an_applied_delta_is_answered_as_applied_after_a_rule_changes(client, conn):
    """Idempotency comes first: the retry returns the first result; it is neither reapplied nor refused."""
    await accepted(client, {"cash": 10})
    headers = {"Idempotency-Key": "spend-1"}
    first = await accepted(client, {"cash": {"$inc": -5}}, headers=headers)
    await put_rules(client, [{"path": "cash", "min": 6}])
    retry = await accepted(client, {"cash": {"$inc": -5}}, headers=headers)
    assert retry == {**first, "duplicate": True}
    assert await snapshot(conn) == (2, [1, 2], {"cash": 5})
    assert await refusals(conn) == []


# ---------------------------------------------------------------- many writers, one budget


async def run_together(workers) -> list:
    """Start all workers at the same moment and gather their results."""
    start = asyncio.Event()

    async def gated(worker):
        await start.wait()
        return await worker

    tasks = [asyncio.ensure_future(gated(w)) for w in workers]
    await asyncio.sleep(0)
    start.set()
    return await asyncio.gather(*tasks)


BUDGET = "resources.cash_balance_usd"


async def test_100_http_writers_spend_one_budget_to_exactly_what_min_0_allows(live_url, conn):
    """1000 spent 15 at a time by 100 concurrent clients, each until refused: 66 deltas applied
    (10 left, no overspend), every other answer a 422 recorded in sms.refusals."""
    await set_policy(conn, [{"path": BUDGET, "min": 0}])
    await apply_delta(conn, {BUDGET: 1000})

    async def writer(index: int) -> tuple[list[str], list[dict[str, Any]]]:
        applied: list[str] = []
        async with httpx.AsyncClient(base_url=live_url, timeout=120) as http:
            while True:
                delta_id = str(uuid.uuid4())
                response = await http.post(
                    "/state/t/f/delta",
                    json={BUDGET: {"$inc": -15}},
                    params={"actor": f"agent-{index}", "delta_id": delta_id},
                )
                if response.status_code == 422:
                    return applied, [policy_problem(response)]
                assert response.status_code == 200, response.text
                assert response.json()["delta_id"] == delta_id
                applied.append(delta_id)

    results = await run_together([writer(i) for i in range(100)])
    applied = [d for ids, _ in results for d in ids]
    problems = [p for _, found in results for p in found]
    assert len(applied) == 66 and len(set(applied)) == 66
    assert len(problems) == 100
    assert all(
        p["violations"]
        == [{"path": BUDGET, "rule": "min", "value": -5, "limit": 0, "message": p["violations"][0]["message"]}]
        for p in problems
    )
    assert await document(conn) == {"resources": {"cash_balance_usd": 10}}
    rows = await log_rows(conn)
    assert [r["version"] for r in rows] == list(range(1, 68))
    assert sorted(r["delta_id"] for r in rows[1:]) == sorted(applied)  # each applied delta once
    recorded = await refusals(conn)
    assert sorted(r["refusal_id"] for r in recorded) == sorted(p["refusal_id"] for p in problems)
    assert not {r["delta_id"] for r in recorded} & {r["delta_id"] for r in rows}


@contextlib.asynccontextmanager
async def connections(url: str, count: int) -> AsyncIterator[list[asyncpg.Connection]]:
    opened = await asyncio.gather(*(asyncpg.connect(url) for _ in range(count)), return_exceptions=True)
    good = [c for c in opened if isinstance(c, asyncpg.Connection)]
    try:
        failures = [c for c in opened if not isinstance(c, asyncpg.Connection)]
        if failures:
            raise failures[0]
        yield good
    finally:
        await asyncio.gather(*(c.close() for c in good), return_exceptions=True)


async def test_sql_writers_of_mixed_amounts_spend_the_budget_to_exactly_0(database_url, conn):
    """Writers spending 15, 7 or 1 at a time through sms.apply_delta, each until refused: the
    1-spenders stop only at 0, so the budget ends at exactly 0 and the applied amounts sum to 1000."""
    await set_policy(conn, [{"path": BUDGET, "min": 0}])
    await apply_delta(conn, {BUDGET: 1000})
    amounts = (15, 7, 1)

    async def writer(worker: asyncpg.Connection, index: int) -> tuple[int, int]:
        amount = amounts[index % 3]
        spent = 0
        while True:
            result = json.loads(
                await worker.fetchval(
                    "SELECT sms.apply_delta('t', 'f', $1::jsonb, p_actor => $2)::text",
                    json.dumps({BUDGET: {"$inc": -amount}}),
                    f"sql-{index}",
                )
            )
            if not result["success"]:
                assert result["refused"] is True
                return spent, 1
            spent += amount

    async with connections(database_url, 30) as pool:
        results = await run_together([writer(c, i) for i, c in enumerate(pool)])
    assert sum(spent for spent, _ in results) == 1000
    assert await document(conn) == {"resources": {"cash_balance_usd": 0}}
    assert len(await refusals(conn)) == 30
    applied = await conn.fetchval("SELECT count(*) FROM sms.deltas WHERE tenant_id = 't' AND fsa_id = 'f'")
    assert await log_versions(conn) == list(range(1, applied + 1))


# ---------------------------------------------------------------- the original preset


async def test_the_original_preset_refuses_the_originals_own_example(client, conn, database_url):
    """`sms policies apply-preset original`: AML 1 may not spend 15,000 (a message naming AML), AML 3
    not more than 1,000, AML 5 may; statuses are an enum; inventory and budget never go below 0."""
    done = await asyncio.to_thread(
        run_sms, "policies", "apply-preset", "original", "--tenant", TENANT, database_url=database_url
    )
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert {"path": "resources.cash_balance_usd", "min": 0, "name": "the budget is never negative"} in shown["rules"]
    await accepted(client, {BUDGET: 20000, "resources.inventory.kitkats": 5}, params={"aml_level": 5})
    before = await snapshot(conn)

    body = await refused(client, {BUDGET: {"$inc": -15000}}, params={"aml_level": 1})
    assert "AML" in body["detail"]
    assert all("AML" in v["message"] for v in body["violations"])
    assert (BUDGET, "max_change") in broken(body)

    body = await refused(client, {BUDGET: {"$inc": -1001}}, params={"aml_level": 3})
    assert broken(body) == [(BUDGET, "max_change")]
    assert "AML" in body["detail"] and "> $1000" in body["violations"][0]["name"]

    assert broken(await refused(client, {"tasks.T1.status": "SHIPPED"}, params={"aml_level": 5})) == [
        ("tasks.T1.status", "enum")
    ]
    assert broken(await refused(client, {"resources.inventory.kitkats": {"$inc": -6}}, params={"aml_level": 5})) == [
        ("resources.inventory.kitkats", "min")
    ]
    body = await refused(client, {"notes": "hi"})  # no level: AML 0 may not change anything
    assert "AML" in body["detail"]
    assert await snapshot(conn) == before

    await accepted(client, {BUDGET: {"$inc": -15000}}, params={"aml_level": 5})
    await accepted(client, {BUDGET: {"$inc": -1000}}, params={"aml_level": 3})
    await accepted(client, {"tasks.T1.status": "DONE"}, params={"aml_level": 5})
    assert (await read_state(client))["resources"]["cash_balance_usd"] == 4000
    body = await refused(client, {BUDGET: {"$inc": -4001}}, params={"aml_level": 5})  # enough level, not enough cash
    assert broken(body) == [(BUDGET, "min")]


# ---------------------------------------------------------------- tenant defaults and state rules


async def test_a_tenant_default_holds_for_every_state_and_a_state_rule_replaces_it(client, conn):
    """Default min 0; state f's own min -100 on the same path replaces it there only."""
    await put_defaults(client, [{"path": "cash", "min": 0}])
    for url in (URL, OTHER, "/state/t/h"):
        assert broken(await refused(client, {"cash": -50}, url=url)) == [("cash", "min")]
    await put_rules(client, [{"path": "cash", "min": -100}])
    assert (await accepted(client, {"cash": -50}))["version"] == 1
    [violation] = (await refused(client, {"cash": -101}))["violations"]
    assert violation["limit"] == -100
    assert broken(await refused(client, {"cash": -50}, url=OTHER)) == [("cash", "min")]
    assert await version(conn, fsa="g") == 0


async def test_a_state_rule_on_another_path_leaves_the_default_in_force(client):
    await put_defaults(client, [{"path": "cash", "min": 0}])
    await put_rules(client, [{"path": "debt", "max": 10}])
    assert broken(await refused(client, {"cash": -1, "debt": 11})) == [("cash", "min"), ("debt", "max")]


async def test_rules_of_one_tenant_never_apply_to_another(client, conn):
    await put_defaults(client, [{"path": "cash", "min": 0}], tenant="a")
    await put_rules(client, [{"path": "debt", "max": 0}], url="/state/a/f")
    assert broken(await refused(client, {"cash": -1}, url="/state/a/f")) == [("cash", "min")]
    await accepted(client, {"cash": -1, "debt": 5}, url="/state/b/f")
    await accepted(client, {"cash": -1, "debt": 5}, url="/state/b/g")
    assert (await client.get("/tenants/b/policies")).json() == {"tenant_id": "b", "rules": []}


async def test_policies_round_trip_over_http(client):
    state_rules = [
        {"path": "tasks.*.status", "enum": ["TODO", "DONE"], "name": "statuses"},
        {"path": "cash", "min": 0, "max": 1e6, "aml_below": 3, "max_change": 100},
        {"path": "config.**", "immutable": True, "required": True},
    ]
    defaults = [{"path": "resources.inventory.*", "min": 0, "type": "integer"}]
    answer = await put_rules(client, state_rules)
    assert answer == {"tenant_id": "t", "fsa_id": "f", "rules": state_rules, "defaults": []}
    assert await put_defaults(client, defaults) == {"tenant_id": "t", "rules": defaults}
    read = await client.get(f"{URL}/policies")
    assert read.status_code == 200
    assert read.json() == {"tenant_id": "t", "fsa_id": "f", "rules": state_rules, "defaults": defaults}
    assert (await client.get("/tenants/t/policies")).json() == {"tenant_id": "t", "rules": defaults}
    assert (await client.get(f"{OTHER}/policies")).json() == {
        "tenant_id": "t",
        "fsa_id": "g",
        "rules": [],
        "defaults": defaults,
    }
    await put_rules(client, [])  # [] removes them
    assert (await client.get(f"{URL}/policies")).json()["rules"] == []


@pytest.mark.parametrize(
    "rule",
    [
        {"path": "cash", "min": 0, "minimum": 1},  # unknown field
        {"path": "a.**.b", "required": True},  # ** only as the last key
        {"path": "a..b", "required": True},
        {"path": "", "min": 0},
        {"min": 0},
        {"path": "cash", "min": 10, "max": 5},
        {"path": "status", "enum": "TODO"},
        {"path": "status", "enum": []},
        {"path": "cash", "min": "0"},
        {"path": "cash", "max_change": -1},
        {"path": "v", "type": "float"},
        {"path": "v", "required": False},
        {"path": "cash", "max_change": 10, "aml_below": 0},
        {"path": "cash", "max_change": 10, "aml_below": 2.5},
        {"path": "cash", "aml_below": 3},  # constrains nothing
        {"path": "cash", "min": 0, "name": 5},
    ],
    ids=lambda rule: json.dumps(rule),
)
async def test_an_invalid_rule_is_a_422_and_changes_nothing(client, conn, rule):
    """An invalid rule among valid ones: 422 invalid-policy, for a state and for the tenant, and the
    rules in force and the change log stay as they were."""
    kept = [{"path": "cash", "min": 0}]
    await put_rules(client, kept)
    await put_defaults(client, kept)
    changes = await conn.fetchval("SELECT count(*) FROM sms.policy_changes")
    for url in (f"{URL}/policies", "/tenants/t/policies"):
        response = await client.put(url, json={"rules": [{"path": "ok", "min": 0}, rule]})
        assert_problem(response, 422, "invalid-policy")
    assert (await client.get(f"{URL}/policies")).json()["rules"] == kept
    assert (await client.get("/tenants/t/policies")).json()["rules"] == kept
    assert await conn.fetchval("SELECT count(*) FROM sms.policy_changes") == changes


async def test_a_rule_set_not_shaped_as_rules_is_refused(client):
    for body in ({"rule": []}, [{"path": "a", "min": 0}], {"rules": {"path": "a", "min": 0}}, {"rules": [1]}):
        assert_problem(await client.put(f"{URL}/policies", json=body), 400, "malformed-request")
    assert (await client.get(f"{URL}/policies")).json()["rules"] == []


async def test_policy_changes_are_logged_with_their_actor(client, conn):
    await put_rules(client, [{"path": "cash", "min": 0}], params={"actor": "admin-ann"})
    await put_defaults(client, [{"path": "debt", "max": 0}], headers={"X-Actor": "admin-bob"})
    await set_policy(conn, [], actor="psql-carl")
    rows = await conn.fetch("SELECT tenant_id, fsa_id, actor, rules::text FROM sms.policy_changes ORDER BY changed_at")
    assert [(r["tenant_id"], r["fsa_id"], r["actor"], json.loads(r["rules"])) for r in rows] == [
        ("t", "f", "admin-ann", [{"path": "cash", "min": 0}]),
        ("t", "", "admin-bob", [{"path": "debt", "max": 0}]),
        ("t", "f", "psql-carl", []),
    ]


# ---------------------------------------------------------------- cost independent of unrelated rules

UNRELATED_RULES = (
    [{"path": f"collection{i}.value", "min": 0} for i in range(400)]
    + [{"path": f"resources.inventory.item{i}", "min": 0} for i in range(400)]
    + [{"path": f"resources.other{i}.*", "max": 5} for i in range(200)]
)
POLICY_TARGETS = "SELECT sms.policy_targets($1, $2, $3::jsonb, $4)::text"
KITKATS_OP = json.dumps([{"path": ["resources", "inventory", "kitkats"], "op": "set", "value": 1}])


async def policy_rows_read(conn: asyncpg.Connection, ops: str) -> tuple[int, set[str], set[str]]:
    """Rows of sms.policies that sms.policy_targets looked at (filtered ones included), the
    indexes it used and the kinds of scan it ran on sms.policies (plan nodes never run left out)."""
    plans = await logged_plans(conn, POLICY_TARGETS, TENANT, FSA, ops, None, analyze=True)
    nodes = [node for plan in plans for node in plan_nodes(plan["Plan"])]
    on_policies = [n for n in nodes if n.get("Relation Name") == "policies" and n["Actual Loops"] > 0]
    assert on_policies, nodes
    rows = sum(
        (n["Actual Rows"] + n.get("Rows Removed by Filter", 0) + n.get("Rows Removed by Index Recheck", 0))
        * n["Actual Loops"]
        for n in on_policies
    )
    indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
    return rows, indexes, {n["Node Type"] for n in on_policies}


async def test_a_delta_on_an_unguarded_path_reads_no_unrelated_rule(conn):
    """1,000 state rules and 500 defaults on other collections and other members of the same
    collection: sms.policy_targets finds none for `resources.inventory.kitkats`, by index probes
    on the primary key that read (next to) no rows, not the 1,500."""
    await set_policy(conn, UNRELATED_RULES)
    await set_policy(conn, UNRELATED_RULES[::2], fsa=None)
    assert await conn.fetchval("SELECT count(*) FROM sms.policies") == 1500
    assert await conn.fetchval(POLICY_TARGETS, TENANT, FSA, KITKATS_OP, None) is None
    rows, indexes, scans = await policy_rows_read(conn, KITKATS_OP)
    assert "policies_pkey" in indexes
    assert "Seq Scan" not in scans
    assert rows <= 3
    result = await apply_delta(conn, {"resources.inventory.kitkats": -1})
    assert result["success"] is True


async def test_a_guarded_path_among_1000_rules_reads_a_handful(conn):
    """The one rule that concerns the op is found, reading a handful of rows; an op on the whole
    collection reads the rules under it (401), and none of the other 600."""
    await set_policy(conn, [*UNRELATED_RULES, KITKATS])
    ops = json.dumps([{"path": ["resources", "inventory", "kitkats"], "op": "inc", "value": -1}])
    targets = json.loads(await conn.fetchval(POLICY_TARGETS, TENANT, FSA, ops, None))
    assert [t["rule"] for t in targets] == [KITKATS]
    rows, indexes, scans = await policy_rows_read(conn, ops)
    assert "policies_pkey" in indexes and "Seq Scan" not in scans
    assert rows <= 5
    assert (await apply_delta(conn, {"resources.inventory.kitkats": {"$inc": -1}}))["refused"] is True
    # a delta on the whole collection concerns every rule under it: those are read, and no others
    collection_ops = json.dumps([{"path": ["resources", "inventory"], "op": "set", "value": {}}])
    rows, _, _ = await policy_rows_read(conn, collection_ops)
    assert 400 <= rows <= 410  # 401, give or take EXPLAIN's rounding of rows per loop


async def test_a_tenant_default_among_1000_state_rules_reads_a_handful(conn):
    """A default rule is found by its anchor too, and whether the state overrides it is one probe,
    not a read of the state's 1,000 rules."""
    await set_policy(conn, UNRELATED_RULES)
    await set_policy(conn, [KITKATS], fsa=None)
    ops = json.dumps([{"path": ["resources", "inventory", "kitkats"], "op": "inc", "value": -1}])
    targets = json.loads(await conn.fetchval(POLICY_TARGETS, TENANT, FSA, ops, None))
    assert [t["rule"] for t in targets] == [KITKATS]
    rows, indexes, scans = await policy_rows_read(conn, ops)
    assert "policies_pkey" in indexes and "Seq Scan" not in scans
    assert rows <= 5


# ---------------------------------------------------------------- globs


async def test_a_star_glob_guards_the_key_in_every_member(client, conn):
    """`tasks.*.status` holds for every task, however the task is written; other keys are free."""
    await put_rules(client, [{"path": "tasks.*.status", "enum": ["TODO", "DONE"]}])
    await accepted(client, {"tasks.T1": {"$set": {"status": "TODO", "title": "anything"}}})
    before = await snapshot(conn)
    for delta, path in (
        ({"tasks.T2": {"$set": {"status": "LOST"}}}, "tasks.T2.status"),
        ({"tasks": {"$merge": {"T3": {"status": "LOST"}}}}, "tasks.T3.status"),
        ({"tasks": {"$set": {"T1": {"status": "TODO"}, "T4": {"status": "LOST"}}}}, "tasks.T4.status"),
        ({"tasks.T1.status": "LOST"}, "tasks.T1.status"),
    ):
        assert broken(await refused(client, delta)) == [(path, "enum")], delta
    assert await snapshot(conn) == before
    await accepted(client, {"tasks.T1.title": "free text", "tasks.T1.status2": "LOST", "tasks.T9.owner": "x"})


async def test_a_double_star_guards_everything_under_its_prefix(client, conn):
    """`config.**` with `max_change: 0`: no change at or below config; `configs` is another key."""
    await accepted(client, {"config": {"$set": {"a": {"b": 1}, "c": 2}}, "configs": 1})
    await put_rules(client, [{"path": "config.**", "max_change": 0}])
    before = await snapshot(conn)
    for delta, path in (
        ({"config.a.b": 2}, "config.a.b"),
        ({"config.a": {"$merge": {"b": 1, "d": 1}}}, "config.a"),
        ({"config": {"$unset": True}}, "config"),
        ({"config.c": {"$inc": 1}}, "config.c"),
    ):
        assert broken(await refused(client, delta)) == [(path, "max_change")], delta
    assert await snapshot(conn) == before
    await accepted(client, {"configs": 2, "other.config": 3})  # no other path is guarded
    await accepted(client, {"config.a.b": 1})  # setting the same value changes nothing


async def test_an_immutable_double_star_keeps_what_exists_and_lets_new_keys_be_added(client, conn):
    """`config.**` is checked at each path a delta writes under config: with `immutable`, every
    value that exists there keeps its value, and new keys may be added beside them (`max_change: 0`
    freezes everything, as the test above shows). An immutable rule on `plain` itself refuses a new
    key under it, since that changes plain."""
    await accepted(client, {"config.a": 1})
    await put_rules(client, [{"path": "plain", "immutable": True}, {"path": "config.**", "immutable": True}])
    await accepted(client, {"plain.a": 1})  # plain did not exist: set once
    before = await snapshot(conn)
    assert broken(await refused(client, {"plain.b": 1})) == [("plain", "immutable")]
    assert broken(await refused(client, {"config.a": 2})) == [("config.a", "immutable")]
    assert broken(await refused(client, {"config": {"$set": {"a": 1, "b": 2}}})) == [("config", "immutable")]
    assert await snapshot(conn) == before
    await accepted(client, {"config.b": 1})


async def test_value_rules_need_a_path_to_values_not_a_double_star(client, conn):
    before = await snapshot(conn)
    for constraint in ({"min": 0}, {"max": 1}, {"enum": [1]}, {"type": "number"}):
        response = await client.put(f"{URL}/policies", json={"rules": [{"path": "resources.**", **constraint}]})
        assert "**" in assert_problem(response, 422, "invalid-policy")["detail"]
    assert await snapshot(conn) == before


async def test_a_question_mark_matches_exactly_one_character(client, conn):
    await put_rules(client, [{"path": "slots.s?", "min": 0}])
    assert broken(await refused(client, {"slots.s1": -1})) == [("slots.s1", "min")]
    assert broken(await refused(client, {"slots": {"$set": {"sX": -1}}})) == [("slots.sX", "min")]
    await accepted(client, {"slots.s10": -1, "slots.s": -1, "slots.t1": -1})
    assert await document(conn) == {"slots": {"s10": -1, "s": -1, "t1": -1}}


async def test_glob_characters_are_the_only_wildcards_in_a_rule_path(client, conn):
    """`_` and `%` are literal (not LIKE wildcards), and `\\.` is a literal dot within a key."""
    await put_rules(
        client, [{"path": "items.a_*", "min": 0}, {"path": "rates.50%", "min": 0}, {"path": "a\\.b", "min": 0}]
    )
    assert broken(await refused(client, {"items.a_x": -1})) == [("items.a_x", "min")]
    assert broken(await refused(client, {"rates.50%": -1})) == [("rates.50%", "min")]
    assert broken(await refused(client, {"a\\.b": -1})) == [("a\\.b", "min")]
    await accepted(client, {"items.abx": -1, "rates.500": -1, "a.b": -1})
    assert await document(conn) == {"items": {"abx": -1}, "rates": {"500": -1}, "a": {"b": -1}}


async def test_a_rule_starting_with_a_glob_guards_every_collection(client, conn):
    await put_rules(client, [{"path": "*.*.status", "enum": ["TODO", "DONE"]}])
    assert broken(await refused(client, {"tasks.T1.status": "LOST"})) == [("tasks.T1.status", "enum")]
    assert broken(await refused(client, {"agents": {"$set": {"A": {"status": "LOST"}}}})) == [
        ("agents.A.status", "enum")
    ]
    await accepted(client, {"tasks.T1.status": "DONE", "status": "LOST", "tasks.T1.sub.status": "LOST"})


async def test_a_value_that_broke_a_rule_before_it_existed_does_not_block_an_unrelated_delta(client, conn):
    """Only the values a delta changes are checked: an old out-of-bounds value stays until touched."""
    await accepted(client, {"cash": -5, "resources.inventory": {"$set": {"old": -1, "ok": 1}}})
    await put_rules(client, [{"path": "cash", "min": 0}, KITKATS])
    await accepted(client, {"note": "unrelated"})
    await accepted(client, {"resources.inventory.new": 3})
    await accepted(client, {"resources.inventory": {"$merge": {"ok": 2}}})  # old is not changed
    await accepted(client, {"resources.inventory": {"$set": {"old": -1, "ok": 3}}})  # nor here
    assert broken(await refused(client, {"cash": {"$inc": 1}})) == [("cash", "min")]  # -4 is still below 0
    await accepted(client, {"cash": 0})
    assert await document(conn) == {"cash": 0, "note": "unrelated", "resources": {"inventory": {"old": -1, "ok": 3}}}
