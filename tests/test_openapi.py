"""The OpenAPI document tells the truth (issue 10, item 5; DESIGN §8, §13).

- Every operation documents its request body and its answers with component schemas, its errors
  as the problem+json the service sends, the headers that matter, and the key as a security
  scheme; the delta body in both its forms (a map, and a list of operations for strict
  JSON-schema callers) besides JSON Patch and Merge Patch.
- The ops-list form is the map form written differently: the same delta, the same log, the same
  limits and errors; a bad entry is a 422 naming it and stores nothing.
- Swagger UI is served from the service itself: its page names no other host.
- schemathesis, with every check on (server errors, status codes, content types, headers,
  response schemas, schema-valid requests accepted and schema-invalid ones refused, methods,
  stateful links, auth), over every operation, with a fixed seed and a bounded number of
  examples, finds nothing. Where one check cannot hold for one operation, the configuration
  below turns that one off and says why. The two SSE streams never end, so they are checked by
  hand here instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import textwrap
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import jsonschema_rs  # schemathesis's own validator
import pytest
from helpers import FSA, TENANT, apply_delta, assert_problem, snapshot

from app.domain.keys import NewKey

SEED = "20261124"
MAX_EXAMPLES = "10"
DELTA = f"/state/{TENANT}/{FSA}/delta"
STATE = f"/state/{TENANT}/{FSA}"
SCHEMATHESIS_TIMEOUT = 240  # seconds; the longest run takes about 80 s here


async def openapi(client) -> dict[str, Any]:
    response = await client.get("/schema/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict[str, Any]):
    for path, item in document["paths"].items():
        for method, operation in item.items():
            yield path, method.upper(), operation


# ---------------------------------------------------------------- the document


async def test_openapi_lists_the_routes(client):
    paths = (await openapi(client))["paths"]
    for path in ("/state/{tenant_id}/{fsa_id}/delta", "/state/{tenant_id}/{fsa_id}/slice", "/events", "/health"):
        assert path in paths


async def test_every_body_and_answer_has_a_schema_and_every_error_is_problem_json(client):
    """No `{}` left: each request body and each 2xx answer names a component schema (or, for the
    SSE streams, text/event-stream); each 4xx/5xx is application/problem+json with the Problem
    schema; 401 says WWW-Authenticate, 429 and 503 say Retry-After."""
    document = await openapi(client)
    schemas = document["components"]["schemas"]
    assert {"Problem", "DeltaMap", "DeltaOps", "Delta", "JsonPatch", "MergePatch", "WriteResult"} <= set(schemas)
    for path, method, operation in operations(document):
        where = f"{method} {path}"
        body = operation.get("requestBody")
        bodiless = ("/rollback", "/heartbeat", "/compact")  # their parameters are in the query
        if method in ("POST", "PUT") and not path.endswith(bodiless) and "agents" not in path:
            assert body, where
        for content in (body or {}).get("content", {}).values():
            assert content["schema"], where
        successes = {status: r for status, r in operation["responses"].items() if status.startswith("2")}
        assert len(successes) == 1, where
        for answer in successes.values():
            (media_type, content), *_ = answer["content"].items()
            if media_type == "text/event-stream":
                assert path.endswith("events"), where
            else:
                assert media_type == "application/json", where
                assert "$ref" in content["schema"] or "oneOf" in content["schema"] or "items" in content["schema"], (
                    where
                )
        for status, answer in operation["responses"].items():
            if status[0] in "45":
                assert list(answer["content"]) == ["application/problem+json"], where
                assert answer["content"]["application/problem+json"]["schema"] == {
                    "$ref": "#/components/schemas/Problem"
                }
        errors = set(operation["responses"]) - set(successes)
        assert {"400", "503"} <= errors, where
        if operation.get("security") != []:
            assert {"401", "403", "404", "429"} <= errors, where
            assert operation["responses"]["401"]["headers"]["WWW-Authenticate"]["required"] is True
            assert operation["responses"]["429"]["headers"]["Retry-After"]["required"] is True
        assert operation["responses"]["503"]["headers"]["Retry-After"]["required"] is True


async def test_problems_are_documented_as_they_are_sent(client):
    """A problem the service sends validates against the documented Problem schema, extra members
    included (a conflict's current values, a policy refusal's violations)."""
    document = await openapi(client)
    validator = jsonschema_rs.Draft202012Validator(
        {"$ref": "#/components/schemas/Problem", "components": document["components"]}, validate_formats=True
    )
    await client.post(DELTA, json={"n": 1})
    conflict = await client.post(DELTA, json={"n": 2, "$expect": {"n": 5}})
    assert_problem(conflict, 409, "expectation-failed")
    await client.put(f"/state/{TENANT}/{FSA}/policies", json={"rules": [{"path": "n", "max": 3}]})
    refused = await client.post(DELTA, json={"n": 9})
    assert_problem(refused, 422, "policy-violation")
    malformed = await client.post(DELTA, content=b"{", headers={"content-type": "application/json"})
    assert_problem(malformed, 400, "malformed-request")
    for response in (conflict, refused, malformed):
        validator.validate(response.json())


async def test_the_delta_body_is_documented_in_both_forms(client):
    """POST …/delta and POST /validate/delta take the map or the ops list (oneOf) as
    application/json, JSON Patch and Merge Patch under their own media types; the ops list's
    entries are a closed set of shapes, one per operator."""
    document = await openapi(client)
    schemas = document["components"]["schemas"]
    for path in ("/state/{tenant_id}/{fsa_id}/delta", "/validate/delta"):
        content = document["paths"][path]["post"]["requestBody"]["content"]
        assert content["application/json"]["schema"] == {"$ref": "#/components/schemas/Delta"}
        assert content["application/json-patch+json"]["schema"] == {"$ref": "#/components/schemas/JsonPatch"}
        assert content["application/merge-patch+json"]["schema"] == {"$ref": "#/components/schemas/MergePatch"}
    assert schemas["Delta"]["oneOf"] == [
        {"$ref": "#/components/schemas/DeltaMap"},
        {"$ref": "#/components/schemas/DeltaOps"},
    ]
    assert schemas["DeltaOps"]["items"] == {"$ref": "#/components/schemas/DeltaOp"}
    ops = set()
    for entry in schemas["DeltaOp"]["oneOf"]:
        assert entry["additionalProperties"] is False
        assert {"path", "op"} <= set(entry["required"])
        op = entry["properties"]["op"]
        ops |= {op["const"]} if "const" in op else set(op["enum"])
    assert ops == {"set", "unset", "inc", "max", "min", "add", "remove", "push", "merge", "expect"}


async def test_keys_are_documented_as_security_schemes(client):
    """The key goes as Authorization: Bearer or X-API-Key; /health needs none."""
    document = await openapi(client)
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert {"bearer": []} in document["security"] and {"apiKey": []} in document["security"]
    assert document["paths"]["/health"]["get"]["security"] == []


async def test_limits_in_the_document_follow_the_settings(make_client):
    """The document is sized by the running service's limits (SMS_MAX_*)."""
    async with make_client(limits=__import__("app.settings").settings.Limits(max_id_length=40, max_paths=7)) as c:
        schemas = (await openapi(c))["components"]["schemas"]
    assert schemas["SegmentId"]["maxLength"] == 40
    assert schemas["DeltaOps"]["maxItems"] == 7


# ---------------------------------------------------------------- the ops-list form


OPS = [
    {"path": "tasks.T1.status", "op": "set", "value": "DONE"},
    {"path": "tasks.T1.tags", "op": "add", "value": ["a", "b"]},
    {"path": "metrics.ctr", "op": "inc", "value": 0.2},
    {"path": "metrics.best", "op": "max", "value": 7},
    {"path": "metrics.low", "op": "min", "value": 3},
    {"path": "log", "op": "push", "value": {"$each": [1, 2, 3], "$slice": -2}},
    {"path": "config", "op": "merge", "value": {"a": 1, "b": None}},
    {"path": "old", "op": "unset"},
    {"path": "literal", "op": "set", "value": {"$inc": 1}},
    {"path": "tasks.T1.status", "op": "expect", "value": "OPEN"},
    {"path": "absent", "op": "expect", "exists": False},
]
MAP = {
    "tasks.T1.status": {"$set": "DONE"},
    "tasks.T1.tags": {"$add": ["a", "b"]},
    "metrics.ctr": {"$inc": 0.2},
    "metrics.best": {"$max": 7},
    "metrics.low": {"$min": 3},
    "log": {"$push": {"$each": [1, 2, 3], "$slice": -2}},
    "config": {"$merge": {"a": 1, "b": None}},
    "old": {"$unset": True},
    "literal": {"$set": {"$inc": 1}},
    "$expect": {"tasks.T1.status": "OPEN", "absent": {"$exists": False}},
}
START = {
    "tasks": {"T1": {"status": "OPEN", "tags": ["a"]}},
    "metrics": {"ctr": 1, "best": 5, "low": 5},
    "log": [0],
    "config": {"b": 2, "c": 3},
    "old": 1,
}


async def test_ops_list_is_the_map_form_written_differently(client, conn):
    """The same delta as a map and as a list of operations, each on a state with the same
    content, leaves the same document and logs the same normalised ops; /validate/delta
    normalises both alike."""
    for fsa in ("as-map", "as-ops"):
        assert (await client.post(f"/state/{TENANT}/{fsa}", json=START)).status_code == 200
    as_map = await client.post(f"/state/{TENANT}/as-map/delta", json=MAP)
    as_ops = await client.post(f"/state/{TENANT}/as-ops/delta", json=OPS)
    assert as_map.status_code == as_ops.status_code == 200, as_ops.text
    assert as_map.json()["changed"] == as_ops.json()["changed"]
    map_state = (await client.get(f"/state/{TENANT}/as-map")).json()["state"]
    ops_state = (await client.get(f"/state/{TENANT}/as-ops")).json()["state"]
    assert map_state == ops_state
    assert ops_state["metrics"] == {"ctr": 1.2, "best": 7, "low": 3}
    assert ops_state["literal"] == {"$inc": 1} and "old" not in ops_state
    logged = [
        (await client.get(f"/state/{TENANT}/{fsa}/deltas", params={"since": 1})).json()["deltas"][0]["ops"]
        for fsa in ("as-map", "as-ops")
    ]
    assert logged[0] == logged[1]
    checked = [(await client.post("/validate/delta", json=body)).json() for body in (MAP, OPS)]
    assert checked[0] == checked[1] and checked[0]["valid"] is True


async def test_ops_list_numbers_stay_exact(client):
    """Values are forwarded as the JSON that was sent: 0.10 stays 0.10 through the ops list."""
    assert (await client.post(DELTA, json=[{"path": "price", "op": "set", "value": 1}])).status_code == 200
    response = await client.post(
        DELTA, content=b'[{"path":"price","op":"inc","value":0.10}]', headers={"content-type": "application/json"}
    )
    assert response.status_code == 200, response.text
    stored = json.loads((await client.get(STATE)).content, parse_float=Decimal)["state"]["price"]
    assert str(stored) == "1.10"


async def test_ops_list_preconditions_refuse_with_a_409_and_apply_nothing(client, conn):
    """An `expect` entry that does not hold is a 409 expectation-failed naming the path, as
    $expect is; nothing is stored."""
    await apply_delta(conn, {"tasks.T1.status": "OPEN"})
    before = await snapshot(conn)
    for entries, failed in (
        (
            [
                {"path": "tasks.T1.status", "op": "set", "value": "DONE"},
                {"path": "tasks.T1.status", "op": "expect", "value": "X"},
            ],
            "tasks.T1.status",
        ),
        ([{"path": "a", "op": "set", "value": 1}, {"path": "tasks.T1", "op": "expect", "exists": False}], "tasks.T1"),
    ):
        body = assert_problem(await client.post(DELTA, json=entries), 409, "expectation-failed")
        assert body["failed"] == [failed]
    assert await snapshot(conn) == before


BAD_ENTRIES = [
    ("unknown op", [{"path": "a", "op": "increment", "value": 1}], "$[0].op"),
    ("missing path", [{"op": "set", "value": 1}], "path"),
    ("unknown field", [{"path": "a", "op": "set", "value": 1, "note": "x"}], "note"),
    ("not an object", [{"path": "a", "op": "set", "value": 1}, 5], "$[1]"),
    ("no value", [{"path": "a", "op": "set", "value": 1}, {"path": "b", "op": "inc"}], "delta entry 1"),
    ("path twice", [{"path": "a", "op": "set", "value": 1}, {"path": "a", "op": "inc", "value": 1}], "delta entry 1"),
    ("exists without expect", [{"path": "a", "op": "set", "value": 1, "exists": True}], "delta entry 0"),
    (
        "expect with both",
        [{"path": "a", "op": "set", "value": 1}, {"path": "a", "op": "expect", "value": 1, "exists": True}],
        "delta entry 1",
    ),
    ("expect with neither", [{"path": "b", "op": "set", "value": 1}, {"path": "a", "op": "expect"}], "delta entry 1"),
    ("unset with a value", [{"path": "a", "op": "unset", "value": 3}], "delta entry 0"),
    ("reserved path", [{"path": "$expect", "op": "set", "value": {"a": 1}}], "delta entry 0"),
    ("type mismatch", [{"path": "a", "op": "inc", "value": "x"}], '"a"'),
    ("bad path", [{"path": "a..b", "op": "set", "value": 1}], "a..b"),
    ("empty list", [], "changes nothing"),
    ("only preconditions", [{"path": "a", "op": "expect", "value": 1}], "changes nothing"),
    (
        "overlapping paths",
        [{"path": "a", "op": "set", "value": {}}, {"path": "a.b", "op": "set", "value": 1}],
        "overlap",
    ),
]


@pytest.mark.parametrize(("case", "entries", "named"), BAD_ENTRIES, ids=[case for case, _, _ in BAD_ENTRIES])
async def test_bad_ops_list_entries_are_refused_and_nothing_is_stored(client, conn, case, entries, named):
    """Each bad entry is a 422 invalid-delta whose detail names it (its index, field or path);
    the state, its version and its log are as they were, and /validate/delta says the same."""
    await apply_delta(conn, {"a": 1})
    before = await snapshot(conn)
    response = await client.post(DELTA, json=entries)
    assert response.status_code == 422, response.text
    assert response.json()["type"] in ("urn:sms:problem:invalid-delta", "urn:sms:problem:type-mismatch")
    assert named in response.json()["detail"], response.json()
    assert await snapshot(conn) == before
    if case != "type mismatch":  # a shape check alone cannot know what the state holds
        assert (await client.post("/validate/delta", json=entries)).status_code == 422


async def test_ops_list_keeps_the_limits(make_client, conn):
    """More entries than SMS_MAX_PATHS is a 413, a path longer than SMS_MAX_KEY_LENGTH a 422
    naming it, as for the map form; nothing is stored."""
    from app.settings import Limits

    before = await snapshot(conn)
    async with make_client(limits=Limits(max_paths=3, max_key_length=20)) as client:
        many = [{"path": f"k{i}", "op": "set", "value": i} for i in range(4)]
        assert_problem(await client.post(DELTA, json=many), 413, "limit-exceeded")
        long = [{"path": "x" * 21, "op": "set", "value": 1}]
        assert assert_problem(await client.post(DELTA, json=long), 422, "invalid-delta")["path"] == "x" * 21
    assert await snapshot(conn) == before


# ---------------------------------------------------------------- Swagger UI, offline


async def test_swagger_ui_is_served_from_the_service_itself(client):
    """/schema/swagger (and /schema) is Swagger UI whose page references only this service's own
    files, each of which is served; /schema/openapi.json stays."""
    for page_path in ("/schema/swagger", "/schema"):
        page = await client.get(page_path)
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        html = page.text
        assert "SwaggerUIBundle" in html
        urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
        assert len(urls) >= 3, urls
        assert not re.search(r"https?://", html.split("spec:")[0]), "the page head names another host"
        for url in urls:
            assert not urlsplit(url).netloc, url
            asset = await client.get(urljoin(str(page.url), url))
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url
    assert (await client.get("/schema/openapi.json")).status_code == 200


# ---------------------------------------------------------------- the SSE streams, by hand


async def test_sse_operations_answer_their_documented_statuses_and_types(live_url, conn):
    """The two streams are never-ending, so schemathesis leaves them out; here each answers a
    documented 200 as text/event-stream, and documented problems (400 invalid slice, 422 invalid
    id) as application/problem+json."""
    await apply_delta(conn, {"n": 1})  # replayed at once: the stream starts without waiting
    async with httpx.AsyncClient(base_url=live_url, timeout=httpx.Timeout(10.0, read=None)) as http:
        document = (await http.get("/schema/openapi.json")).json()
        cases = [
            (
                "/state/{tenant_id}/{fsa_id}/events",
                f"/state/{TENANT}/{FSA}/events",
                {"slice": "tasks..x"},
                f"/state/{TENANT}/%E2%80%8B/events",
            ),
            ("/events", "/events", {"tenant": TENANT, "slice": ":x"}, "/events?tenant=%E2%80%8B"),
        ]
        for template, url, bad_slice, bad_id in cases:
            responses = document["paths"][template]["get"]["responses"]
            params = {"since": "0", **({"tenant": TENANT} if template == "/events" else {})}
            async with http.stream("GET", url, params=params) as stream:
                assert stream.status_code == 200
                assert "200" in responses
                media_type = stream.headers["content-type"].split(";")[0]
                assert media_type == "text/event-stream" == next(iter(responses["200"]["content"]))
                async for line in stream.aiter_lines():
                    assert line.startswith("retry:") or line == "" or line.startswith(":"), line
                    break
            for response, status in ((await http.get(url, params=bad_slice), 400), (await http.get(bad_id), 422)):
                assert response.status_code == status, response.text
                assert str(status) in responses
                assert response.headers["content-type"].split(";")[0] == "application/problem+json"


# ---------------------------------------------------------------- schemathesis, all checks

# Every check on; below, the checks turned off for single operations, and why.
CONFIG = textwrap.dedent(
    """
    seed = {seed}

    [checks]
    enabled = true
    """
)
STATE_DEPENDENT = textwrap.dedent(
    """
    [[operations]]
    # A delta valid by schema can still be refused by the state it meets: an earlier case may
    # have stored a string where this one says $inc (422 type-mismatch), PUT a rule it breaks
    # (422 policy-violation), or left a number that its $inc would carry out of range. Such
    # answers depend on the state, which no schema can describe; the run on fresh states below
    # checks these bodies with this check on. /validate/delta also refuses tenant_id without
    # fsa_id (or the reverse), a dependency between parameters OpenAPI cannot express.
    include-name = [
        "POST /state/{tenant_id}/{fsa_id}/delta",
        "POST /state/{tenant_id}/{fsa_id}/deltas",
        "POST /validate/delta",
        "POST /state/{tenant_id}/{fsa_id}",
        "POST /state/{tenant_id}/{fsa_id}/rollback",
        "POST /agents/{tenant_id}/{fsa_id}/{agent_path}",
    ]
    checks.positive_data_acceptance.enabled = false
    """
)
RULES = textwrap.dedent(
    """
    [[operations]]
    # A rule's min may not be above its max, and aml_below must be written as a whole number
    # (48, not 48.0, which JSON Schema calls an integer too): relations the schema cannot state.
    include-name = ["PUT /state/{tenant_id}/{fsa_id}/policies", "PUT /tenants/{tenant_id}/policies"]
    checks.positive_data_acceptance.enabled = false
    """
)

# For the run on fresh states: every case writes to a state of its own, so what it meets is the
# empty state and nothing but the delta decides the answer.
FRESH_STATES = textwrap.dedent(
    """
    import uuid

    import schemathesis


    @schemathesis.hook
    def before_call(context, case, kwargs):
        case.path_parameters["fsa_id"] = "fresh-" + uuid.uuid4().hex
    """
)


async def schemathesis(url: str, tmp_path: Path, *args: str, hooks: str | None = None) -> None:
    """schemathesis run against the service at `url` with every check but those turned off above
    (all of them on with `hooks`, the fresh states); fails with its report."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.format(seed=SEED) + ("" if hooks else STATE_DEPENDENT + RULES))
    env = dict(os.environ)
    if hooks is not None:
        (tmp_path / "sms_hooks.py").write_text(hooks)
        env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env.get('PYTHONPATH', '')}"
        env["SCHEMATHESIS_HOOKS"] = "sms_hooks"
    cli = Path(sys.executable).with_name("schemathesis")
    run = await asyncio.create_subprocess_exec(
        str(cli),
        "--config-file",
        str(config),
        "run",
        f"{url}/schema/openapi.json",
        "--max-examples",
        MAX_EXAMPLES,
        "--generation-database",
        "none",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        cwd=tmp_path,
    )
    try:
        output, _ = await asyncio.wait_for(run.communicate(), SCHEMATHESIS_TIMEOUT)
    except TimeoutError:
        run.kill()
        output = await run.stdout.read() if run.stdout else b""
        pytest.fail(f"schemathesis took over {SCHEMATHESIS_TIMEOUT} s:\n" + output.decode(errors="replace")[-8000:])
    assert run.returncode == 0, output.decode(errors="replace")[-8000:]


# The schemathesis runs check the HTTP contract, which is the same whatever PostgreSQL answers
# underneath: CI runs them once, in the pass on the embedded server, to stay within its time.
once_per_ci = pytest.mark.skipif(
    bool(os.environ.get("SMS_TEST_DATABASE_URL")),
    reason="the HTTP contract: once per CI run, in the pass on the embedded PostgreSQL",
)


@once_per_ci
async def test_schemathesis_finds_nothing_without_a_key(live_url, tmp_path):
    """Every operation but the key routes, with every check, in protected-mode-free testing
    (insecure_no_auth): a key made here would make every later request a 401. The key routes
    have their own run, with a key."""
    # one regex: a second --exclude-path-regex would replace the first. The streams never end:
    # test_sse_operations_answer_their_documented_statuses_and_types checks them. The batch route
    # has a run of its own.
    await schemathesis(live_url, tmp_path, "--exclude-path-regex", "events|^/keys", "--exclude-name", BATCH_OPERATION)


BATCH_OPERATION = "POST /state/{tenant_id}/{fsa_id}/deltas"


@once_per_ci
async def test_schemathesis_finds_nothing_in_batches(live_url, tmp_path):
    """The batch route with every check, on valid batches only: generating lists of writes that
    may hold no other member makes hypothesis discard many drafts (its filter_too_much health
    check, which is about generation, not the service), and negative generation cannot build
    such lists at all; tests/test_group_commit.py sends the invalid batches, each refused with
    its problem."""
    await schemathesis(
        live_url,
        tmp_path,
        "--include-name",
        BATCH_OPERATION,
        "--mode",
        "positive",
        "--suppress-health-check",
        "filter_too_much",
    )


@once_per_ci
async def test_schemathesis_finds_nothing_with_an_admin_key(live_url, db, tmp_path):
    """The key routes, with every check, for an admin key of tenant "0" (the tenant id
    schemathesis tries first, so that some of the keys it asks for may be made)."""
    key = NewKey.make(["0"], "admin")
    await db.create_key(key)
    await schemathesis(
        live_url, tmp_path, "--include-path-regex", "^/keys", "--header", f"Authorization: Bearer {key.key}"
    )


@once_per_ci
async def test_schemathesis_valid_deltas_are_accepted_on_fresh_states(live_url, tmp_path):
    """The delta route with every check, positive_data_acceptance included: on a state of its
    own, every delta the schema calls valid — map, ops list, JSON Patch, Merge Patch — is
    applied (2xx) or meets only its own precondition (409)."""
    await schemathesis(
        live_url,
        tmp_path,
        "--include-name",
        "POST /state/{tenant_id}/{fsa_id}/delta",
        "--mode",
        "positive",
        # Not the coverage phase: its boundary cases are lists that repeat one path, which the
        # service refuses by contract (each path once, documented) and JSON Schema cannot state
        # (uniqueItems would not say it, and makes generation many times slower);
        # test_bad_ops_list_entries_are_refused_and_nothing_is_stored checks that refusal.
        "--phases",
        "examples,fuzzing",
        hooks=FRESH_STATES,
    )
