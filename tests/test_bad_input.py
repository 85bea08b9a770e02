"""Bad input over HTTP: every malformed, invalid or oversized request gets its documented 4xx as
application/problem+json (never a 500) and changes nothing (DESIGN §4, §8)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import pytest
import pytest_asyncio
from helpers import service_settings
from litestar.testing import AsyncTestClient

from app.api.app import create_app
from app.settings import Limits

DELTA = "/state/{t}/f/delta"  # {t}: the tenant each case seeds
SEED = {"a": {"b": 1}, "s": "text", "n": 1, "list": [1, 2]}


@dataclass(frozen=True)
class Case:
    id: str
    body: bytes | None
    status: int | tuple[int, ...]  # the documented status, or the acceptable ones where DESIGN allows several
    path: str = DELTA
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


def j(value: object) -> bytes:
    return json.dumps(value).encode()


OK = j({"n": {"$inc": 1}})  # a valid delta, for cases whose fault is elsewhere

CASES = [
    # malformed bodies: 400
    Case("json-truncated", b'{"a": ', 400),
    Case("json-trailing-garbage", b'{"a": 1} x', 400),
    Case("json-single-quotes", b"{'a': 1}", 400),
    Case("json-bare-word", b"hello", 400),
    Case("json-nan", b'{"a": NaN}', 400),
    Case("empty-body", b"", 400),
    Case("whitespace-body", b"  \n ", 400),
    Case("invalid-utf8", b'{"a": "\xff\xfe"}', 400),
    Case("invalid-utf8-key", b'{"\xc3\x28": 1}', 400),
    Case("lone-surrogate-value", b'{"a": "\\ud800"}', 400),
    Case("lone-surrogate-key", b'{"\\udc00": 1}', 400),
    Case("nul-escape-value", b'{"a": "x\\u0000y"}', 400),
    Case("nul-escape-key", b'{"a\\u0000b": 1}', 400),
    Case("nul-escape-nested-key", b'{"a": {"$set": {"k\\u0000": 1}}}', 400),
    Case("number-overflow", b'{"x": 1e200000}', (400, 413, 422)),
    Case("number-underflow", b'{"x": 1e-20000}', (400, 413, 422)),
    Case("inc-overflow", b'{"n": {"$inc": ' + b"9" * 131072 + b".5}}", (413, 422)),
    # nesting beyond max_depth (32): 422, however deep
    Case("depth-33", b"[" * 33 + b"]" * 33, 422),
    Case("depth-1000-arrays", b"[" * 1000 + b"]" * 1000, 422),
    Case("depth-10000-objects", b'{"a":' * 10000 + b"1" + b"}" * 10000, 422),
    # bodies that are JSON but not a delta: 422
    Case("body-array", b"[1, 2]", 422),
    Case("body-string", b'"a"', 422),
    Case("body-number", b"5", 422),
    Case("body-null", b"null", 422),
    Case("body-true", b"true", 422),
    Case("empty-delta", b"{}", 422),
    Case("expect-only", j({"$expect": {"n": 1}}), 422),
    # paths
    Case("path-empty", j({"": 1}), 422),
    Case("path-double-dot", j({"a..b": 1}), 422),
    Case("path-leading-dot", j({".a": 1}), 422),
    Case("path-trailing-dot", j({"a.": 1}), 422),
    Case("path-only-dot", j({".": 1}), 422),
    Case("path-bad-escape", j({"a\\x": 1}), 422),
    Case("path-trailing-backslash", j({"a\\": 1}), 422),
    Case("path-too-long", j({"p" * 513: 1}), 422),
    Case("path-too-deep", j({".".join(["k"] * 65): 1}), 413),
    Case("path-through-string", j({"s.x": 1}), 422),
    Case("path-through-number", j({"n.x": {"$inc": 1}}), 422),
    Case("path-through-array", j({"list.x": 1}), 422),
    Case("overlap-prefix", j({"a": 1, "a.b": 2}), 422),
    Case("overlap-deep", j({"x.y": 1, "x.y.z.w": 2}), 422),
    # reserved and operator keys
    Case("top-level-dollar", j({"$foo": 1}), 422),
    Case("top-level-dollar-set", j({"$set": {"a": 1}}), 422),
    Case("top-level-dollar-beside-path", j({"$inc": {"n": 1}, "a.b": 2}), 422),
    Case("expect-not-object", j({"$expect": 5, "n": 1}), 422),
    Case("expect-bad-exists", j({"$expect": {"n": {"$exists": 1}}, "s": "y"}), 422),
    Case("expect-unknown-op", j({"$expect": {"n": {"$gt": 1}}, "s": "y"}), 422),
    Case("expect-bad-path", j({"$expect": {"a..b": 1}, "s": "y"}), 422),
    Case("mixed-dollar-and-plain", j({"n": {"$inc": 1, "b": 2}}), 422),
    Case("several-operators", j({"n": {"$inc": 1, "$max": 5}}), 422),
    Case("unknown-operator", j({"n": {"$mul": 2}}), 422),
    Case("unknown-operator-slice", j({"list": {"$slice": 1.5}}), 422),
    Case("nested-mixed-operator", j({"a": {"b": {"$inc": 1, "c": 2}}}), 422),  # the nested form takes operators or keys
    Case("operator-in-array", j({"a": [{"$inc": 1}]}), 422),
    Case("nested-operator-in-array", j({"a.c": [{"$inc": 1}]}), 422),
    # operands
    Case("inc-string", j({"n": {"$inc": "x"}}), 422),
    Case("inc-bool", j({"n": {"$inc": True}}), 422),
    Case("inc-null", j({"n": {"$inc": None}}), 422),
    Case("inc-array", j({"n": {"$inc": [1]}}), 422),
    Case("unset-false", j({"n": {"$unset": False}}), 422),
    Case("unset-one", j({"n": {"$unset": 1}}), 422),
    Case("max-array", j({"n": {"$max": [1]}}), 422),
    Case("min-object", j({"n": {"$min": {"x": 1}}}), 422),
    Case("push-each-not-array", j({"list": {"$push": {"$each": 1}}}), 422),
    Case("push-slice-fraction", j({"list": {"$push": {"$each": [3], "$slice": 1.5}}}), 422),
    Case("push-slice-string", j({"list": {"$push": {"$each": [3], "$slice": "2"}}}), 422),
    Case("push-slice-huge", j({"list": {"$push": {"$each": [3], "$slice": 10**30}}}), 422),
    Case("push-extra-key", j({"list": {"$push": {"$each": [3], "$sort": 1}}}), 422),
    Case("merge-number", j({"a": {"$merge": 5}}), 422),
    Case("merge-array", j({"a": {"$merge": [1]}}), 422),
    # type mismatches: the whole delta is rejected
    Case("inc-on-string", j({"s": {"$inc": 1}, "z": 1}), 422),
    Case("add-on-object", j({"a": {"$add": [1]}, "z": 1}), 422),
    Case("push-on-number", j({"n": {"$push": 1}, "z": 1}), 422),
    Case("max-string-on-number", j({"n": {"$max": "x"}, "z": 1}), 422),
    Case("inc-on-object-member", j({"a.b": {"$inc": 1}, "a": {"$unset": True}}), 422),
    # ids
    Case("tenant-too-long", OK, 422, path=f"/state/{'t' * 129}/f/delta"),
    Case("fsa-too-long", OK, 422, path=f"/state/t/{'f' * 129}/delta"),
    Case("tenant-too-many-bytes", OK, 422, path="/state/" + "%C3%A9" * 100 + "/f/delta"),
    Case("tenant-control-char", OK, 422, path="/state/t%01x/f/delta"),
    Case("tenant-nul", OK, 422, path="/state/t%00x/f/delta"),
    Case("fsa-newline", OK, 422, path="/state/t/f%0A/delta"),
    Case("tenant-invalid-utf8", OK, 400, path="/state/t%FF/f/delta"),
    Case("tenant-slash", OK, (404, 422), path="/state/a%2Fb/f/delta"),
    Case("fsa-slash", OK, (404, 422), path="/state/t/a%2F/delta"),
    Case("actor-too-long", OK, 422, params={"actor": "a" * 129}),
    Case("actor-header-too-long", OK, 422, headers={"X-Actor": "a" * 129}),
    Case("actor-control-char", OK, 422, params={"actor": "a\x01b"}),
    Case("actor-nul", OK, 422, params={"actor": "a\x00b"}),
    Case("actor-header-tab", OK, 422, headers={"X-Actor": "a\tb"}),
    Case("lineage-too-long", OK, 422, params={"lineage_id": "l" * 129}),
    Case("lineage-header-too-long", OK, 422, headers={"X-Lineage-Id": "l" * 129}),
    Case("lineage-control-char", OK, 422, params={"lineage_id": "l\x1fl"}),
    Case("lineage-nul", OK, 422, params={"lineage_id": "\x00"}),
    Case("idempotency-key-too-long", OK, 422, headers={"Idempotency-Key": "k" * 129}),
    Case("delta-id-too-long", OK, 422, params={"delta_id": "k" * 129}),
    Case("idempotency-key-empty", OK, 422, headers={"Idempotency-Key": ""}),
    Case("delta-id-empty", OK, 422, params={"delta_id": ""}),
    Case("meta-nul", OK, 400, params={"pillar": "p\x00"}),
    # a query parameter beyond its documented length: malformed, like any other (not a body's 413)
    Case("meta-too-long", OK, 400, params={"pillar": "p" * 257}),
    Case("meta-too-many", OK, 400, params={f"m{i}": "v" for i in range(21)}),
    # versions
    Case("if-match-word", OK, 400, headers={"If-Match": '"abc"'}),
    Case("if-match-negative", OK, 400, headers={"If-Match": '"-1"'}),
    Case("if-match-huge", OK, 400, headers={"If-Match": '"99999999999999999999"'}),
    Case("if-match-list", OK, 400, headers={"If-Match": '"1", "2"'}),
    Case("if-match-stale", OK, 409, headers={"If-Match": '"0"'}),
    Case("if-match-ahead", OK, 409, headers={"If-Match": '"7"'}),
    Case("if-match-empty", OK, 400, headers={"If-Match": ""}),
    Case("expected-version-empty", OK, 400, params={"expected_version": ""}),
    Case("expected-version-fraction", OK, 400, params={"expected_version": "1.5"}),
    Case("expected-version-word", OK, 400, params={"expected_version": "latest"}),
    Case("expected-version-negative", OK, 400, params={"expected_version": "-3"}),
    Case("expected-version-stale", OK, 409, params={"expected_version": "0"}),
    Case("expect-failed", j({"$expect": {"n": 2}, "n": 3}), 409),
    Case("expect-exists-failed", j({"$expect": {"zz": {"$exists": True}}, "n": 3}), 409),
    # trace context
    Case("traceparent-garbage", OK, 400, headers={"traceparent": "garbage"}),
    Case("traceparent-short-trace", OK, 400, headers={"traceparent": "00-abc-0123456789abcdef-01"}),
    Case("traceparent-non-hex", OK, 400, headers={"traceparent": "00-" + "g" * 32 + "-0123456789abcdef-01"}),
    Case("traceparent-extra-field", OK, 400, headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01-xx"}),
    # other formats
    Case("json-patch-not-array", j({"op": "add"}), 422, content_type="application/json-patch+json"),
    Case(
        "json-patch-move",
        j([{"op": "move", "from": "/a", "path": "/c"}]),
        422,
        content_type="application/json-patch+json",
    ),
    Case(
        "json-patch-no-slash",
        j([{"op": "add", "path": "a", "value": 1}]),
        422,
        content_type="application/json-patch+json",
    ),
    Case("json-patch-no-value", j([{"op": "add", "path": "/a"}]), 422, content_type="application/json-patch+json"),
    Case("json-patch-empty", j([]), 422, content_type="application/json-patch+json"),
    Case(
        "json-patch-root", j([{"op": "add", "path": "/", "value": 1}]), 422, content_type="application/json-patch+json"
    ),
    Case(
        "json-patch-test-failed",
        j([{"op": "test", "path": "/n", "value": 5}, {"op": "add", "path": "/z", "value": 1}]),
        409,
        content_type="application/json-patch+json",
    ),
    Case(
        "json-patch-remove-missing",
        j([{"op": "remove", "path": "/zz"}]),
        409,
        content_type="application/json-patch+json",
    ),
    Case(
        "json-patch-lone-surrogate",
        b'[{"op": "add", "path": "/a", "value": "\\ud800"}]',
        400,
        content_type="application/json-patch+json",
    ),
    Case(
        "json-patch-nul",
        b'[{"op": "add", "path": "/a\\u0000", "value": 1}]',
        400,
        content_type="application/json-patch+json",
    ),
    Case("merge-patch-array", j([1]), 422, content_type="application/merge-patch+json"),
    Case("merge-patch-empty", j({}), 422, content_type="application/merge-patch+json"),
    Case("merge-patch-lone-surrogate", b'{"a": "\\udfff"}', 400, content_type="application/merge-patch+json"),
    Case("merge-patch-nul", b'{"a": {"k": "\\u0000"}}', 400, content_type="application/merge-patch+json"),
    # full-state replacement
    Case("replace-array", j([1]), 422, path="/state/{t}/f"),
    Case("replace-null", b"null", 422, path="/state/{t}/f"),
    Case("replace-dollar-key", j({"$x": 1}), 422, path="/state/{t}/f"),
    Case("replace-key-too-long", j({"k" * 513: 1}), 422, path="/state/{t}/f"),
    Case("replace-malformed", b"{", 400, path="/state/{t}/f"),
    Case("replace-nul", b'{"a": "\\u0000"}', 400, path="/state/{t}/f"),
    Case("replace-lone-surrogate", b'{"a": "\\ud800"}', 400, path="/state/{t}/f"),
    Case("replace-tenant-control-char", j({"a": 1}), 422, path="/state/t%07/f"),
    Case("replace-stale-version", j({"a": 1}), 409, path="/state/{t}/f", headers={"If-Match": '"0"'}),
    # validation endpoint and reads
    Case("validate-malformed", b"{", 400, path="/validate/delta"),
    Case("validate-bad-path", j({"a..b": 1}), 422, path="/validate/delta"),
    Case("validate-nul", b'{"a": "\\u0000"}', 400, path="/validate/delta"),
    Case("validate-tenant-only", OK, 422, path="/validate/delta", params={"tenant_id": "t"}),
    Case("deltas-since-negative", None, 400, method="GET", path="/state/{t}/f/deltas", params={"since": "-1"}),
    Case("deltas-since-word", None, 400, method="GET", path="/state/{t}/f/deltas", params={"since": "x"}),
    Case("deltas-limit-zero", None, 400, method="GET", path="/state/{t}/f/deltas", params={"limit": "0"}),
    Case("deltas-limit-huge", None, 400, method="GET", path="/state/{t}/f/deltas", params={"limit": "100000"}),
    Case("read-tenant-too-long", None, 422, method="GET", path=f"/state/{'t' * 129}/f"),
]


def assert_problem(response, status: int | tuple[int, ...]) -> dict:
    allowed = status if isinstance(status, tuple) else (status,)
    assert response.status_code != 500, response.text[:1000]
    assert response.status_code in allowed, response.text[:1000]
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    problem = response.json()
    assert problem["status"] == response.status_code
    assert problem["success"] is False
    assert isinstance(problem["type"], str) and problem["type"]
    assert isinstance(problem["detail"], str) and problem["detail"]
    return problem


async def snapshot(client, conn, tenant: str = "t") -> tuple:
    """The seeded state as GET returns it, and every row of the log and of the state headers."""
    state = (await client.get(f"/state/{tenant}/f")).json()
    log = await conn.fetch("SELECT tenant_id, fsa_id, version, delta_id FROM sms.deltas ORDER BY 1, 2, 3")
    states = await conn.fetch("SELECT tenant_id, fsa_id, version, entry_count FROM sms.states ORDER BY 1, 2")
    return state, [tuple(r) for r in log], [tuple(r) for r in states]


async def seed(client, conn, tenant: str = "t") -> tuple:
    response = await client.post(f"/state/{tenant}/f/delta", json=SEED, params={"actor": "seeder"})
    assert response.status_code == 200, response.text
    before = await snapshot(client, conn, tenant)
    assert before[0]["version"] == 1 and before[0]["state"] == SEED
    return before


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared(module_database_url) -> AsyncIterator[tuple[AsyncTestClient, asyncpg.Connection]]:
    """One database for the whole battery: each case seeds a tenant of its own, and every case
    leaves every table exactly as it found it, which is what the cases check."""
    settings = service_settings(module_database_url, pool_min_size=1, pool_max_size=4)
    connection = await asyncpg.connect(module_database_url)
    try:
        async with AsyncTestClient(app=create_app(settings, module_database_url)) as test_client:
            yield test_client, connection
    finally:
        await connection.close()


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input_is_refused_and_changes_nothing(shared, case: Case):
    client, conn = shared
    tenant = "case-" + case.id
    before = await seed(client, conn, tenant)
    headers = dict(case.headers)
    if case.body is not None:
        headers["Content-Type"] = case.content_type
    path = case.path.replace("{t}", tenant)
    response = await client.request(case.method, path, content=case.body, headers=headers, params=case.params)
    assert_problem(response, case.status)
    assert await snapshot(client, conn, tenant) == before


def nested(depth: int) -> dict:
    value: object = 1
    for _ in range(depth - 1):
        value = {"k": value}
    return {"deep": value}


TIGHT = "/state/t/f/delta"
# (id, limits, path, body, params, status)
LIMIT_CASES = [
    ("body-too-large", Limits(max_body_bytes=100), TIGHT, j({"s": "x" * 200}), {}, 413),
    ("replace-body-too-large", Limits(max_body_bytes=100), "/state/t/f", j({"s": "x" * 200}), {}, 413),
    ("validate-body-too-large", Limits(max_body_bytes=100), "/validate/delta", j({"s": "x" * 200}), {}, 413),
    ("too-many-paths", Limits(max_paths=5), TIGHT, j({f"p{i}": i for i in range(6)}), {}, 413),
    (
        "too-many-paths-with-expect",
        Limits(max_paths=5),
        TIGHT,
        j({"p": 1, "$expect": {f"e{i}": 1 for i in range(5)}}),
        {},
        413,
    ),
    ("too-deep", Limits(max_depth=4), TIGHT, j(nested(5)), {}, 422),
    ("too-deep-replace", Limits(max_depth=4), "/state/t/f", j(nested(5)), {}, 422),
    ("path-too-long", Limits(max_key_length=10), TIGHT, j({"p" * 11: 1}), {}, 422),
    ("expect-path-too-long", Limits(max_key_length=10), TIGHT, j({"p": 1, "$expect": {"e" * 11: 1}}), {}, 422),
    ("replace-key-too-long", Limits(max_key_length=10), "/state/t/f", j({"k" * 11: 1}), {}, 422),
    ("tenant-too-long", Limits(max_id_length=8), "/state/ttttttttt/f/delta", OK, {}, 422),
    ("actor-too-long", Limits(max_id_length=8), TIGHT, OK, {"actor": "a" * 9}, 422),
    ("lineage-too-long", Limits(max_id_length=8), TIGHT, OK, {"lineage_id": "l" * 9}, 422),
    ("delta-id-too-long", Limits(max_id_length=8), TIGHT, OK, {"delta_id": "d" * 9}, 422),
]


@pytest.mark.parametrize(
    ("limits", "path", "body", "params", "status"), [c[1:] for c in LIMIT_CASES], ids=[c[0] for c in LIMIT_CASES]
)
async def test_limits_are_enforced_and_change_nothing(client, conn, make_client, limits, path, body, params, status):
    before = await seed(client, conn)
    async with make_client(limits=limits) as tight:
        response = await tight.post(path, content=body, params=params, headers={"Content-Type": "application/json"})
        assert_problem(response, status)
        assert await snapshot(client, conn) == before
        # a request within the limits passes: the limit, not something else, refused the first one
        assert (await tight.post(TIGHT, json={"probe": 1})).status_code == 200
    assert (await client.get("/state/t/f")).json()["state"] == {**SEED, "probe": 1}


async def test_default_body_limit_is_8_mib(client, conn):
    before = await seed(client, conn)
    body = j({"s": "x" * (8 * 1024 * 1024)})
    response = await client.post(TIGHT, content=body, headers={"Content-Type": "application/json"})
    assert_problem(response, 413)
    assert await snapshot(client, conn) == before


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nowhere", 404),
        ("GET", "/state", 404),
        ("DELETE", "/state/t", 405),
        ("PATCH", "/state/t/f", 405),
        ("PUT", TIGHT, 405),
    ],
)
async def test_unknown_routes_and_methods_are_problems(client, conn, method, path, status):
    before = await seed(client, conn)
    response = await client.request(method, path, content=OK)
    assert_problem(response, status)
    assert await snapshot(client, conn) == before


async def test_invalid_utf8_in_ids_does_not_alias_states(client, conn):
    """Two different byte strings in the URL must not name the same state: either both are refused
    or they stay two states."""
    first = await client.post("/state/t%FF/f/delta", json={"a": 1})
    second = await client.post("/state/t%FE/f/delta", json={"a": 1})
    if first.status_code == second.status_code == 200:
        assert await conn.fetchval("SELECT count(*) FROM sms.states") == 2
        assert first.json()["version"] == second.json()["version"] == 1
    else:
        assert_problem(first, 400)
        assert_problem(second, 400)
        assert await conn.fetchval("SELECT count(*) FROM sms.states") == 0


@pytest.mark.parametrize(
    "url",
    [
        "/state/t/f/deltas?since=23511205895301842862080",
        "/state/t/f/diff?from=2594057458771465601024&to=1",
        "/state/t/f/diff?from=0&to=2594057458771465601024",
        "/state/t/f?version=2594057458771465601024",
        "/state/t/f/changes?since=2594057458771465601024",
    ],
)
async def test_versions_beyond_64_bits_are_refused_not_a_500(client, url):
    response = await client.get(url)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
