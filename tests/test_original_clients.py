"""The original service's clients and scripts run unchanged against this one (issue 11; DESIGN §12).

Its clients are reproduced here as test doubles of their HTTP calls — the URLs, query parameters
and bodies they send and what they read of the answers — not as their code:

- the first generation sends nested deltas, operators inside plain objects, and reads the state;
- the second generation sends dotted deltas with actor, lineage_id, aml_level and pillar as query
  parameters, comments with query parameters, reads `result.get("comments")`, and reads `success`
  (not the status) of every write;
- its agents post heartbeats under names that hold "/".

The second generation's own differences (a flat GET /state, refusals as 200 with success false)
are served under SMS_COMPAT=v2 (app.api.compat); everything else is the default contract.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import psycopg
import pytest
from helpers import FSA, TENANT, apply_delta, assert_problem, document, log_rows, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.domain.delta import escape_key
from app.domain.policies import PRESETS
from app.settings import Settings

STATE = f"/state/{TENANT}/{FSA}"


class FirstGeneration:
    """The first-generation client: a delta is a nested object, operators at its leaves."""

    def __init__(self, http: Any) -> None:
        self.http = http

    async def update(self, delta: dict[str, Any], actor: str = "script") -> dict[str, Any]:
        response = await self.http.post(f"{STATE}/delta", params={"actor": actor}, json=delta)
        assert response.status_code == 200, response.text
        return response.json()

    async def state(self) -> dict[str, Any]:
        return (await self.http.get(STATE)).json()


class SecondGeneration:
    """The second-generation client: dotted deltas, metadata as query parameters, comments and
    heartbeats; it reads `success` and `message`, whatever the status."""

    def __init__(self, http: Any, actor: str = "PlannerBot", aml_level: int = 5) -> None:
        self.http = http
        self.params = {"actor": actor, "lineage_id": "run-7", "aml_level": str(aml_level), "pillar": "ops"}

    async def apply_delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return (await self.http.post(f"{STATE}/delta", params=self.params, json=delta)).json()

    async def get_state(self) -> dict[str, Any]:
        return (await self.http.get(STATE)).json()

    async def add_comment(self, task_id: str, comment: str, is_blocker: bool = False) -> dict[str, Any]:
        params = {"author": self.params["actor"], "comment": comment, "is_blocker": str(is_blocker).lower()}
        return (await self.http.post(f"/tasks/{TENANT}/{FSA}/{task_id}/comment", params=params)).json()

    async def get_comments(self, task_id: str) -> list[dict[str, Any]]:
        result = (await self.http.get(f"/tasks/{TENANT}/{FSA}/{task_id}/comments")).json()
        return result.get("comments") or []

    async def heartbeat(self, agent: str) -> dict[str, Any]:
        return (await self.http.post(f"/agents/{TENANT}/{FSA}/{agent}/heartbeat")).json()


# ---------------------------------------------------------------- the first generation


async def test_the_first_generation_script_merges_nested_deltas_leaf_by_leaf(client, conn):
    """Its script: stock and budget set, then 5000 kitkats bought for 5000: kitkats 1000 + 5000 =
    6000, budget 10000 - 5000 = 5000, the other members of inventory kept, version 2; the log
    keeps the normalised ops."""
    script = FirstGeneration(client)
    first = await script.update({"inventory": {"kitkats": 1000, "mars": 40}, "budget_remaining": 10000})
    assert first["version"] == 1
    second = await script.update({"inventory": {"kitkats": {"$inc": 5000}}, "budget_remaining": {"$inc": -5000}})
    assert second["version"] == 2 and second["success"] is True
    state = await script.state()
    assert state["version"] == 2
    assert state["state"] == {"inventory": {"kitkats": 6000, "mars": 40}, "budget_remaining": 5000}
    logged = (await log_rows(conn))[-1]
    assert sorted(logged["ops"], key=lambda op: op["path"]) == [
        {"op": "inc", "path": ["budget_remaining"], "value": -5000},
        {"op": "inc", "path": ["inventory", "kitkats"], "value": 5000},
    ]


async def test_nested_leaves_at_any_depth_plain_objects_keep_their_meaning(client, conn):
    """Plain leaves beside operator leaves are set; keys with dots stay one key; a plain object
    with no operator inside still sets its path to exactly that object."""
    await apply_delta(conn, {"a": {"b": {"n": 1, "keep": True}, "c": 1}, "x": {"y": 1, "z": 2}})
    response = await client.post(
        f"{STATE}/delta", json={"a": {"b": {"n": {"$inc": 2}, "tags": {"$add": "t"}}, "c": 5, "d.e": 1}}
    )
    assert response.status_code == 200, response.text
    assert await document(conn) == {
        "a": {"b": {"n": 3, "keep": True, "tags": ["t"]}, "c": 5, "d.e": 1},
        "x": {"y": 1, "z": 2},
    }
    assert (await client.post(f"{STATE}/delta", json={"x": {"y": 7}})).status_code == 200
    assert (await document(conn))["x"] == {"y": 7}  # set whole: z is gone


@pytest.mark.parametrize(
    ("delta", "named"),
    [
        ({"a": {"b": {"$inc": 1, "c": 2}}}, "a.b"),  # an object that mixes operators and keys
        ({"a": {"b": {"$inc": 1}}, "a.b": 3}, "a.b"),  # one path, nested and dotted
        ({"a": {"b": {"$inc": "x"}}}, "a.b"),  # the operator's own check
        ({"a": {"b": {"$bogus": 1}}}, "a.b"),
    ],
    ids=["mixed", "twice", "bad operand", "unknown operator"],
)
async def test_bad_nested_deltas_are_refused_naming_the_path_and_store_nothing(client, conn, delta, named):
    await apply_delta(conn, {"a": {"b": 1}})
    before = await snapshot(conn)
    body = assert_problem(await client.post(f"{STATE}/delta", json=delta), 422, "invalid-delta")
    assert named in body["detail"] or body.get("path") == named, body
    assert await snapshot(conn) == before


async def test_sql_callers_send_nested_deltas_too(conn):
    result = await apply_delta(conn, {"inventory": {"kitkats": 10, "mars": 1}})
    assert result["version"] == 1
    await apply_delta(conn, {"inventory": {"kitkats": {"$inc": -3}}})
    assert await document(conn) == {"inventory": {"kitkats": 7, "mars": 1}}
    normal = json.loads(await conn.fetchval("SELECT sms.normalize_delta($1::jsonb)::text", '{"a": {"b": {"$max": 2}}}'))
    assert normal["ops"] == [{"op": "max", "path": ["a", "b"], "value": 2}]


# ---------------------------------------------------------------- the second generation


async def test_the_second_generation_scripts_comments_and_heartbeats(client, conn):
    """Its script: a task, four comments by query parameters (one a blocker), read back through
    `result.get("comments")` with body_md and is_blocker; heartbeats of agents named with "/"."""
    agent = SecondGeneration(client)
    written = await agent.apply_delta({"tasks.DESIGN_001.status": "IN_PROGRESS", "tasks.DESIGN_001.owner": "ann"})
    assert written["success"] is True and written["version"] == 1
    bodies = ["Started the **layout**", "Needs `T2` first", "Unblocked", "Done; see PR #4"]
    for index, body in enumerate(bodies):
        made = await agent.add_comment("DESIGN_001", body, is_blocker=index == 1)
        assert made["success"] is True and isinstance(made["comment_id"], int), made
        assert made["body_md"] == body
    comments = await agent.get_comments("DESIGN_001")
    assert len(comments) == 4
    assert [c["body_md"] for c in comments] == list(reversed(bodies))  # newest first
    assert [c["is_blocker"] for c in comments] == [False, False, True, False]
    assert {c["author"] for c in comments} == {"PlannerBot"}
    assert await agent.get_comments("NO_SUCH_TASK") == []

    for name in ("team-a/DesignBot", "eu/west/ReviewBot"):
        beat = await agent.heartbeat(name)
        assert beat["success"] is True and beat["agent"] == name
        assert (await document(conn))["agents_online"][name] == beat["timestamp"]
    logged = (await log_rows(conn))[0]
    assert logged["meta"] == {"aml_level": 5, "pillar": "ops"} and logged["lineage_id"] == "run-7"


@pytest.fixture
async def v2(make_client):
    """The service under SMS_COMPAT=v2, with the original service's policies as the tenant's."""
    async with make_client(compat="v2") as http:
        response = await http.put(f"/tenants/{TENANT}/policies", json={"rules": PRESETS["original"]})
        assert response.status_code == 200, response.text
        yield http


async def test_v2_get_state_is_the_state_itself_with_lineage_version(v2, conn):
    agent = SecondGeneration(v2)
    assert await agent.get_state() == {"lineage_version": 0}
    await agent.apply_delta({"budget_remaining": 10000, "inventory.kitkats": 1000})
    await agent.apply_delta({"inventory.kitkats": {"$inc": 5}})
    flat = await agent.get_state()
    assert flat == {"budget_remaining": 10000, "inventory": {"kitkats": 1005}, "lineage_version": 2}
    response = await v2.get(STATE)
    assert response.headers["etag"] == '"2"'
    assert (await v2.get(STATE, params={"version": 1})).json() == {
        "budget_remaining": 10000,
        "inventory": {"kitkats": 1000},
        "lineage_version": 1,
    }
    summary = (await v2.get(STATE, params={"summary": "true"})).json()  # no such read in v2: left as it is
    assert summary["version"] == 2 and "summary" in summary


async def test_v2_refusals_are_200_with_success_false_and_change_nothing(v2, conn):
    """The AML refusal as that service answered it: 200 {"success": false, "message": "Policy
    violation: …AML…", "version"}; so are a version conflict and an invalid delta."""
    trusted, untrusted = SecondGeneration(v2, aml_level=5), SecondGeneration(v2, "IntakeBot", aml_level=1)
    assert (await trusted.apply_delta({"budget_remaining": 10000}))["success"] is True
    before = await snapshot(conn)

    refused = await untrusted.apply_delta({"budget_remaining": {"$inc": -10}})
    assert refused["success"] is False
    assert refused["message"].startswith("Policy violation: ") and "AML" in refused["message"], refused
    assert refused["version"] == 1
    assert refused["violations"] and uuid.UUID(refused["refusal_id"])

    response = await v2.post(f"{STATE}/delta", json={"budget_remaining": 1}, headers={"If-Match": '"7"'})
    assert response.status_code == 200
    conflict = response.json()
    assert (conflict["success"], conflict["version"]) == (False, 1)
    assert conflict["message"].startswith("Version conflict: ")

    invalid = (await v2.post(f"{STATE}/delta", json={"budget_remaining": {"$inc": "x"}})).json()
    assert invalid["success"] is False and invalid["message"]
    assert await snapshot(conn) == before

    # what the original service did not have keeps this service's problems
    assert_problem(await v2.put(f"/tenants/{TENANT}/policies", json={"rules": [{"path": "x"}]}), 422, "invalid-policy")
    assert_problem(await v2.get(f"{STATE}/slice", params={"slice": ":x"}), 400, "invalid-slice")


async def test_the_default_contract_answers_the_same_refusal_with_a_problem(client, conn):
    await client.put(f"/tenants/{TENANT}/policies", json={"rules": PRESETS["original"]})
    await apply_delta(conn, {"budget_remaining": 10000}, p_meta={"aml_level": 5})
    response = await client.post(f"{STATE}/delta", params={"aml_level": "1"}, json={"budget_remaining": {"$inc": -10}})
    body = assert_problem(response, 422, "policy-violation")
    assert "AML" in json.dumps(body["violations"], ensure_ascii=False)
    assert (await client.get(STATE)).json()["state"] == {"budget_remaining": 10000}


async def test_the_v2_openapi_document_says_where_it_differs(v2, client):
    v2_description = (await v2.get("/schema/openapi.json")).json()["info"]["description"]
    assert "SMS_COMPAT=v2" in v2_description and "lineage_version" in v2_description
    assert "SMS_COMPAT=v2" not in (await client.get("/schema/openapi.json")).json()["info"]["description"]


def test_the_contract_is_chosen_by_sms_compat(monkeypatch):
    monkeypatch.setenv("SMS_COMPAT", "v2")
    assert Settings.from_env().compat == "v2"
    monkeypatch.setenv("SMS_COMPAT", "v3")
    with pytest.raises(SystemExit, match="SMS_COMPAT"):
        Settings.from_env()
    monkeypatch.delenv("SMS_COMPAT")
    assert Settings.from_env().compat == "default"


# ---------------------------------------------------------------- nested ≡ flattened

PATHS = st.sampled_from(["a", "b", "c", "d", "a.b", "a.c"])  # a delta's own keys are dotted paths
KEYS = st.text(alphabet="abc.", min_size=1, max_size=3)  # keys below them are keys (a dot is a dot)
OPERATORS = st.sampled_from(
    [
        {"$inc": 2},
        {"$max": 5},
        {"$min": -1},
        {"$set": {"$literal": 1}},
        {"$unset": True},
        {"$push": "p"},
        {"$add": "s"},
        {"$merge": {"m": 1}},
    ]
)
PLAIN = st.one_of(st.integers(-9, 9), st.text(alphabet="xy", max_size=2), st.booleans(), st.just([1, 2]), st.just({}))


def nested_values(depth: int = 3) -> st.SearchStrategy[Any]:
    """A value of a nested delta: a plain leaf, an operator object, or a plain object of those."""
    if depth == 0:
        return st.one_of(PLAIN, OPERATORS)
    return st.one_of(
        PLAIN, OPERATORS, st.dictionaries(KEYS, st.deferred(lambda: nested_values(depth - 1)), min_size=1, max_size=3)
    )


def has_operator(value: Any) -> bool:
    if not isinstance(value, dict):
        return False
    return any(key.startswith("$") or has_operator(child) for key, child in value.items())


def flattened(delta: dict[str, Any]) -> list[tuple[str, Any]]:
    """The dotted form of a nested delta, as DESIGN §12 defines it (written here without the SQL):
    a top-level key is a dotted path already; below it each key is one key of the path."""
    flat: list[tuple[str, Any]] = []

    def leaves(path: str, value: Any) -> None:
        if isinstance(value, dict) and value and not any(key.startswith("$") for key in value):
            for key, child in value.items():
                leaves(f"{path}.{escape_key(key)}", child)
        else:
            flat.append((path, value))

    for path, value in delta.items():
        if isinstance(value, dict) and has_operator(value) and not any(k.startswith("$") for k in value):
            leaves(path, value)
        else:
            flat.append((path, value))
    return flat


@pytest.fixture
def pg(database_url: str):
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def applied(pg: psycopg.Connection, fsa: str, delta: dict[str, Any]) -> tuple[str | None, str]:
    """The delta applied to a state seeded alike: (SQLSTATE of a refusal or None, the document)."""
    pg.execute("SELECT sms.apply_delta('p', %s, %s::jsonb)", (fsa, json.dumps(SEED)))
    try:
        pg.execute("SELECT sms.apply_delta('p', %s, %s::jsonb)", (fsa, json.dumps(delta)))
        error = None
    except psycopg.Error as exc:
        error = exc.sqlstate
    return error, pg.execute("SELECT sms.document('p', %s)::text", (fsa,)).fetchone()[0]


SEED = {"a": {"a": 1, "b": {"c": 2}}, "b": [1], "c": "x"}


@settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(delta=st.dictionaries(PATHS, nested_values(), min_size=1, max_size=3))
def test_a_nested_delta_and_its_flattened_form_give_the_same_state(pg, delta):
    flat = flattened(delta)
    nested_error, nested_document = applied(pg, uuid.uuid4().hex, delta)
    if len({path for path, _ in flat}) < len(flat):  # a path reached twice: the delta is invalid
        assert nested_error == "SM001"
        assert json.loads(nested_document) == SEED
        return
    flat_error, flat_document = applied(pg, uuid.uuid4().hex, dict(flat))
    event("applied" if nested_error is None else f"refused ({nested_error})")
    assert nested_error == flat_error
    assert json.loads(nested_document) == json.loads(flat_document)
