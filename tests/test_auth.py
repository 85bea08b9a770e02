"""Who may do what (DESIGN §10, issue 9), over HTTP with auth on, against a real PostgreSQL.

- Every route of the app, taken from the app's own route list, is tried with the key of its own
  tenant (2xx), a key of another tenant (404, as if nothing were there), no key (401 with
  WWW-Authenticate) and a key of its tenant one scope too low (403). A route without an example
  in ROUTE_EXAMPLES fails the table, so no route is added untested.
- The tenant SSE feed carries only its tenant's changes while two tenants write at once.
- Keys: made by `sms keys create` (printed once, stored only as a SHA-256), listed, revoked,
  expired, unknown; made, listed and revoked over HTTP within the making key's tenants, AML
  level and actor.
- Protected mode: with no key, loopback clients only; once a key exists (or SMS_AUTH=required),
  a key for everyone; `sms serve` on a public address refuses to start without a key.
- Lineage cannot be forged: a key's actor and AML level win over the request's claims.
- Rate limits per key, shared by every process of the service.

Nothing asserts on wall-clock time: rate limits are checked by counting answers, with the
tokens that can have refilled during the requests as the only allowance.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from helpers import ROOT, apply_delta, assert_problem, log_rows, run_sms, serving, sms_env

from app.api.app import create_app
from app.domain.keys import SCOPES, NewKey, looks_like_key
from app.settings import Settings

A = "acme"  # the tenant whose routes are tried
B = "bravo"  # another tenant, with data of its own
FSA = "f"
TASK = "T1"
LINEAGE = "L1"
WAIT_SECONDS = 60.0  # the most any wait may take; generous, so slow machines never fail
STREAM_TIMEOUT = httpx.Timeout(10.0, read=None)  # an SSE stream may stay silent; waits are bounded elsewhere
CHALLENGE = 'Bearer realm="sms"'


# ---------------------------------------------------------------- helpers


async def make_key(db, tenants: list[str], scope: str, **options: Any) -> NewKey:
    """A key made as `sms keys create` makes one, stored through the owner's Database."""
    key = NewKey.make(tenants, scope, **options)
    await db.create_key(key)
    return key


def bearer(key: NewKey | str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key if isinstance(key, str) else key.key}"}


def auth_on(**changes: Any) -> dict[str, Any]:
    """Settings of the service as deployed: no --insecure-no-auth; no rate limit unless a test
    sets one (the default, 100/s, must not interfere with a test that is about something else)."""
    return {"insecure_no_auth": False, "rate_limit": 0, **changes}


async def seed(conn) -> None:
    """The same content in A and B: a task (comments need one), a counter, a lineage."""
    for tenant in (A, B):
        await apply_delta(conn, {"tasks": {TASK: {"status": "OPEN"}}, "counter": 1}, tenant, FSA, p_lineage_id=LINEAGE)
        await apply_delta(conn, {"counter": 2}, tenant, FSA, p_lineage_id=LINEAGE)


def assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith(CHALLENGE), response.headers
    return body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- the route table

# A route as the app lists it: (method, path template).
Route = tuple[str, str]


@dataclass(frozen=True)
class Example:
    """A request to one route, for tenant `{t}`: the path (with its query) and a JSON body.

    `sse`: the answer is an endless stream; only its status and headers are read.
    `public`: anyone may call it; `status` is what it answers (with or without a key).
    `names_tenant`: the request names its tenant (path, `tenant` or `tenant_id`), so any key of
    another tenant gets a 404, whatever its scope; the key routes name none.
    `other`: what an admin key of another tenant gets, (status, problem slug); by default the
    404 of anything that is not there. `other_check` looks further at that answer.
    """

    path: str
    body: Any = None
    sse: bool = False
    public: bool = False
    status: int = 200
    names_tenant: bool = True
    other: tuple[int, str | None] = (404, "not-found")
    other_check: Callable[[httpx.Response], None] | None = None


def _lists_no_key_of_a(response: httpx.Response) -> None:
    """GET /keys by B's admin key: served, but not one key naming A."""
    keys = response.json()["keys"]
    assert keys, "B's own keys are listed"
    assert all(set(key["tenants"]) <= {B} for key in keys), keys


def _names_no_tenant(response: httpx.Response) -> None:
    """GET /metrics by B's admin key: the counts of every tenant, none of them named."""
    assert "sms_http_request_duration_seconds" in response.text
    assert A not in response.text and B not in response.text


STATE = "/state/{tenant_id:str}/{fsa_id:str}"
TASK_ROUTE = "/tasks/{tenant_id:str}/{fsa_id:str}/{task_id:str}"
ROUTE_EXAMPLES: dict[Route, Example] = {
    ("GET", "/health"): Example("/health", public=True),
    ("GET", "/health/live"): Example("/health/live", public=True),
    ("GET", "/health/ready"): Example("/health/ready", public=True),
    # no label names a tenant: an admin key of any tenant reads every count, and none names A
    ("GET", "/metrics"): Example("/metrics", names_tenant=False, other=(200, None), other_check=_names_no_tenant),
    ("GET", "/schema"): Example("/schema", public=True),
    ("GET", "/schema/openapi.json"): Example("/schema/openapi.json", public=True),
    ("GET", "/schema/openapi.yaml"): Example("/schema/openapi.yaml", public=True),
    ("GET", "/schema/openapi.yml"): Example("/schema/openapi.yml", public=True),
    ("GET", "/schema/swagger"): Example("/schema/swagger", public=True),
    ("GET", "/schema/assets/swagger-ui/{file_path:path}"): Example(
        "/schema/assets/swagger-ui/swagger-ui.css", public=True
    ),
    ("HEAD", "/schema/assets/swagger-ui/{file_path:path}"): Example(
        "/schema/assets/swagger-ui/swagger-ui.css", public=True
    ),
    ("GET", "/schema/oauth2-redirect.html"): Example("/schema/oauth2-redirect.html", public=True),
    ("GET", "/schema/{path:str}"): Example("/schema/nothing-here", public=True, status=404),
    # the state page holds no data (its script reads the API with the user's key): open to anyone
    ("GET", "/ui/{tenant_id:str}/{fsa_id:str}"): Example("/ui/{t}/f", public=True),
    ("GET", "/ui/{name:str}"): Example("/ui/ui.js", public=True),
    ("GET", "/state/{tenant_id:str}"): Example("/state/{t}"),
    ("GET", STATE): Example("/state/{t}/f"),
    ("POST", STATE): Example("/state/{t}/f", body={"tasks": {TASK: {"status": "DONE"}}, "counter": 3}),
    ("DELETE", STATE): Example("/state/{t}/f"),
    ("POST", STATE + "/compact"): Example("/state/{t}/f/compact?before_version=1"),
    ("GET", STATE + "/erasures"): Example("/state/{t}/f/erasures"),
    ("GET", STATE + "/ttl"): Example("/state/{t}/f/ttl"),
    ("PUT", STATE + "/ttl"): Example("/state/{t}/f/ttl", body={"expires_after": "7d"}),
    ("DELETE", STATE + "/ttl"): Example("/state/{t}/f/ttl"),
    ("GET", STATE + "/slice"): Example("/state/{t}/f/slice?slice=tasks"),
    ("GET", STATE + "/aliases"): Example("/state/{t}/f/aliases"),
    ("PUT", STATE + "/aliases/{alias:str}"): Example("/state/{t}/f/aliases/todo", body={"collection": "tasks"}),
    ("DELETE", STATE + "/aliases/{alias:str}"): Example("/state/{t}/f/aliases/todo"),
    ("POST", STATE + "/delta"): Example("/state/{t}/f/delta", body={"counter": 5}),
    ("POST", "/validate/delta"): Example("/validate/delta?tenant_id={t}&fsa_id=f", body={"counter": 5}),
    ("GET", STATE + "/deltas"): Example("/state/{t}/f/deltas"),
    ("POST", STATE + "/deltas"): Example("/state/{t}/f/deltas", body=[{"delta": {"counter": 5}}]),
    ("GET", STATE + "/events"): Example("/state/{t}/f/events", sse=True),
    ("GET", "/events"): Example("/events?tenant={t}", sse=True),
    ("GET", STATE + "/history"): Example("/state/{t}/f/history?path=counter"),
    ("GET", STATE + "/diff"): Example("/state/{t}/f/diff?from=0"),
    ("POST", STATE + "/rollback"): Example("/state/{t}/f/rollback?to_version=1"),
    ("GET", "/lineage/{lineage_id:str}"): Example("/lineage/" + LINEAGE + "?tenant_id={t}"),
    ("GET", STATE + "/changes"): Example("/state/{t}/f/changes?since=0"),
    ("POST", "/agents/{tenant_id:str}/{fsa_id:str}/{agent_path:path}"): Example("/agents/{t}/f/agent-1/heartbeat"),
    ("POST", TASK_ROUTE + "/comment"): Example(
        "/tasks/{t}/f/" + TASK + "/comment", body={"author": "ann", "body": "ok"}
    ),
    ("GET", TASK_ROUTE + "/comments"): Example("/tasks/{t}/f/" + TASK + "/comments"),
    ("GET", STATE + "/policies"): Example("/state/{t}/f/policies"),
    ("PUT", STATE + "/policies"): Example("/state/{t}/f/policies", body={"rules": [{"path": "counter", "min": 0}]}),
    ("GET", "/tenants/{tenant_id:str}/policies"): Example("/tenants/{t}/policies"),
    ("PUT", "/tenants/{tenant_id:str}/policies"): Example(
        "/tenants/{t}/policies", body={"rules": [{"path": "counter", "max": 100}]}
    ),
    # Key routes name their tenants in the body (POST) or not at all: B's admin key may not make
    # a key for A (403), lists only keys within its own tenants, and cannot see A's key (404).
    ("GET", "/keys"): Example("/keys", names_tenant=False, other=(200, None), other_check=_lists_no_key_of_a),
    ("POST", "/keys"): Example(
        "/keys", body={"tenants": ["{t}"], "scopes": ["read"]}, names_tenant=False, other=(403, "forbidden")
    ),
    ("DELETE", "/keys/{key_id:str}"): Example("/keys/{victim}", names_tenant=False),
}


def app_routes() -> dict[Route, str]:
    """Every route of the app as (method, path template) -> the scope it needs, as
    app.api.auth.authorize reads it: the handler's opt["scope"], public under /schema, else admin.
    The OPTIONS handlers are left out (they serve no tenant's data)."""
    app = create_app(Settings(database_url="postgresql://unused@127.0.0.1/unused"), "postgresql://unused@127.0.0.1/u")
    routes: dict[Route, str] = {}
    for route in app.routes:
        for handler in getattr(route, "route_handlers", []):
            methods = set(handler.http_methods)
            if methods == {"OPTIONS"}:  # each path's Allow answer (app.api.app.allow_routes)
                continue
            scope = handler.opt.get("scope") or ("public" if route.path.startswith("/schema") else "admin")
            for method in methods:
                routes[(method, route.path)] = scope
    return routes


APP_ROUTES = app_routes()


def fill(value: Any, names: dict[str, str]) -> Any:
    """The example with `{t}`, `{victim}` … replaced in every string."""
    if isinstance(value, str):
        for name, replacement in names.items():
            value = value.replace("{" + name + "}", replacement)
        return value
    if isinstance(value, list):
        return [fill(item, names) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, names) for key, item in value.items()}
    return value


@dataclass
class Table:
    """A live service with auth on, A's and B's data, and keys of every scope."""

    http: httpx.AsyncClient
    a: dict[str, NewKey]  # A's keys by scope
    b: dict[str, NewKey]  # B's keys by scope
    names: dict[str, str]  # what {t}, {victim} … stand for in examples

    async def call(self, method: str, example: Example, key: NewKey | None) -> httpx.Response:
        """The example's request, as `key` (or with none); an SSE answer is not read past its head."""
        kwargs: dict[str, Any] = {"headers": bearer(key) if key else {}}
        if example.body is not None:
            kwargs["json"] = fill(example.body, self.names)
        path = fill(example.path, self.names)
        if not example.sse:
            return await asyncio.wait_for(self.http.request(method, path, **kwargs), WAIT_SECONDS)

        async def head() -> httpx.Response:
            async with self.http.stream(method, path, **kwargs) as response:
                if response.status_code != 200:
                    await response.aread()  # a problem body is short and complete
                return response  # leaving the block closes the endless stream

        return await asyncio.wait_for(head(), WAIT_SECONDS)


@pytest.fixture
async def table(settings, db, conn) -> AsyncIterator[Table]:
    await seed(conn)
    a = {scope: await make_key(db, [A], scope, label=f"a-{scope}") for scope in SCOPES}
    b = {scope: await make_key(db, [B], scope, label=f"b-{scope}") for scope in SCOPES}
    victim = await make_key(db, [A], "read", label="victim")
    async with (
        serving(replace(settings, **auth_on())) as url,
        httpx.AsyncClient(base_url=url, timeout=STREAM_TIMEOUT) as http,
    ):
        yield Table(http, a, b, names={"t": A, "victim": victim.key_id})


def route_id(route: Route) -> str:
    return f"{route[0]} {route[1]}"


def test_every_route_of_the_app_has_an_example_in_the_table():
    """A route added to the app without an example here fails: isolation is tested for every route."""
    missing = sorted(set(APP_ROUTES) - set(ROUTE_EXAMPLES))
    assert not missing, f"add an example to ROUTE_EXAMPLES for: {missing}"


def test_the_table_names_only_routes_the_app_has():
    """An example of a route that is gone (or renamed) is stale: the table is the app's route list."""
    stale = sorted(set(ROUTE_EXAMPLES) - set(APP_ROUTES))
    assert not stale, f"no such route in the app: {stale}"


def test_public_routes_are_exactly_health_the_openapi_document_and_the_state_page():
    """Only /health (and /health/live and /health/ready, for probes), /schema/* and the state page's
    files (/ui/*, no data) are open to anyone; every other route needs a key."""
    public = {path for (_, path), scope in APP_ROUTES.items() if scope == "public"}
    health = {"/health", "/health/live", "/health/ready"}
    assert public == health | {path for path in public if path.startswith(("/schema", "/ui/"))}
    assert "/health" in public
    examples_public = {route for route, example in ROUTE_EXAMPLES.items() if example.public}
    assert examples_public == {route for route, scope in APP_ROUTES.items() if scope == "public"}


@pytest.mark.parametrize("route", sorted(APP_ROUTES), ids=route_id)
async def test_route_isolation_own_key_other_tenant_no_key_low_scope(route, table):
    """For every route: A's key with the route's scope → 2xx; B's key (admin, and read) → 404
    not-found as for anything not there; no key → 401 with WWW-Authenticate; A's key one scope
    below the route's → 403 insufficient-scope. Public routes answer the same to everyone."""
    example = ROUTE_EXAMPLES.get(route)
    assert example is not None, f"no example for {route_id(route)}: add one to ROUTE_EXAMPLES"
    method, scope = route[0], APP_ROUTES[route]

    if scope == "public":
        for key in (None, table.a["read"], table.b["admin"]):
            response = await table.call(method, example, key)
            assert response.status_code == example.status, (key and key.label, response.text)
            assert "www-authenticate" not in response.headers
        return
    assert not example.public, f"{route_id(route)} needs the {scope} scope but its example says public"

    # no key: 401 with a challenge
    assert_unauthorized(await table.call(method, example, None))

    # another tenant's admin key: the 404 of anything that is not there
    response = await table.call(method, example, table.b["admin"])
    status, slug = example.other
    if slug is None:
        assert response.status_code == status, response.text
    else:
        body = assert_problem(response, status, slug)
        if status == 404:
            assert body["title"] == "Not found" and A not in response.text, body
    if example.other_check:
        example.other_check(response)

    # another tenant's read key: still that 404 (the tenant is checked before the scope)
    response = await table.call(method, example, table.b["read"])
    if example.names_tenant:
        assert_problem(response, 404, "not-found")
    elif scope != "read":
        assert_problem(response, 403, "insufficient-scope")

    # A's key one scope too low: 403
    if scope != "read":
        lower = table.a[SCOPES[SCOPES.index(scope) - 1]]
        body = assert_problem(await table.call(method, example, lower), 403, "insufficient-scope")
        assert scope in body["detail"]

    # A's key with just the scope the route needs: served
    response = await table.call(method, example, table.a[scope])
    assert 200 <= response.status_code < 300, response.text
    if example.sse:
        assert response.headers["content-type"].startswith("text/event-stream")


async def test_another_tenants_state_is_the_same_404_as_one_that_does_not_exist(table):
    """No existence leak: B's key asking for A's state gets exactly the answer (status, headers'
    type, body) it gets for a tenant that does not exist, and a 404 of the same type and title
    as a genuine 404 of its own tenant (a comment on a task that does not exist)."""
    comment = {"author": "ann", "body": "ok"}
    existing = Example("/tasks/{t}/f/" + TASK + "/comment", body=comment)
    nowhere = Example("/tasks/nobody/f/" + TASK + "/comment", body=comment)
    missing = Example("/tasks/{t}/f/NO_SUCH_TASK/comment", body=comment)
    foreign = await table.call("POST", existing, table.b["admin"])
    absent = await table.call("POST", nowhere, table.b["admin"])
    genuine = await table.call("POST", missing, table.a["write"])
    assert assert_problem(foreign, 404, "not-found") == assert_problem(absent, 404, "not-found")
    assert foreign.headers["content-type"] == absent.headers["content-type"] == genuine.headers["content-type"]
    genuine_body = assert_problem(genuine, 404, "not-found")
    assert {k: foreign.json()[k] for k in ("type", "title", "status", "success")} == {
        k: genuine_body[k] for k in ("type", "title", "status", "success")
    }


async def test_a_key_of_two_tenants_reaches_both_and_no_third(db, conn, make_client):
    """A key names a set of tenants: each of them is served, any other is 404."""
    await seed(conn)
    both = await make_key(db, [A, B], "read")
    async with make_client(**auth_on()) as client:
        for tenant in (A, B):
            response = await client.get(f"/state/{tenant}/{FSA}", headers=bearer(both))
            assert response.status_code == 200 and response.json()["state"]["counter"] == 2
        assert_problem(await client.get(f"/state/charlie/{FSA}", headers=bearer(both)), 404, "not-found")
        # several tenants named at once: every one of them must be the key's
        events = await client.get(f"/state/{A}/{FSA}/deltas?tenant=charlie", headers=bearer(both))
        assert_problem(events, 404, "not-found")


# ---------------------------------------------------------------- the SSE tenant feed


@dataclass
class SseReader:
    """What one SSE subscriber received: (event id, change) in arrival order."""

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)


async def follow_sse(http: httpx.AsyncClient, url: str, key: NewKey, reader: SseReader) -> None:
    async with http.stream("GET", url, headers=bearer(key)) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "data" in fields:
                    reader.events.append((fields.get("id", ""), json.loads(fields["data"])))
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


async def until(condition: Callable[[], bool], what: str, tasks: list[asyncio.Task]) -> None:
    """Waits (bounded) for `condition`; a reader that died fails the test with its own error."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        for task in tasks:
            if task.done():
                task.result()
                raise AssertionError(f"a reader stopped before {what}")
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_tenant_feed_never_carries_another_tenants_change(settings, db, conn):
    """GET /events?tenant=A with A's key, while A and B write concurrently to states of the same
    names: every event is one of A's deltas (tenant, state, version and delta id as in A's log),
    each once; nothing of B's arrives, up to a last write of A made after all of B's were
    delivered to B's own feed."""
    writes_per_state = 10
    fsas = ["f1", "f2"]
    a_read, b_read = await make_key(db, [A], "read"), await make_key(db, [B], "read")
    a_write, b_write = await make_key(db, [A], "write"), await make_key(db, [B], "write")
    a_seen, b_seen = SseReader(), SseReader()
    async with (
        serving(replace(settings, **auth_on())) as url,
        httpx.AsyncClient(base_url=url, timeout=STREAM_TIMEOUT) as http,
    ):
        readers = [
            asyncio.create_task(follow_sse(http, f"/events?tenant={A}", a_read, a_seen)),
            asyncio.create_task(follow_sse(http, f"/events?tenant={B}", b_read, b_seen)),
        ]
        try:

            async def writer(tenant: str, key: NewKey, fsa: str) -> None:
                for n in range(writes_per_state):
                    response = await http.post(
                        f"/state/{tenant}/{fsa}/delta", json={"n": n, "by": tenant}, headers=bearer(key)
                    )
                    assert response.status_code == 200, response.text

            await asyncio.gather(*(writer(A, a_write, fsa) for fsa in fsas), *(writer(B, b_write, fsa) for fsa in fsas))
            expected = writes_per_state * len(fsas)
            await until(lambda: len(b_seen.events) >= expected, "B's feed to deliver B's writes", readers)
            last = await http.post(f"/state/{A}/f1/delta", json={"last": True}, headers=bearer(a_write))
            assert last.status_code == 200, last.text
            await until(lambda: len(a_seen.events) >= expected + 1, "A's feed to deliver A's writes", readers)
        finally:
            for task in readers:
                task.cancel()
            for task in readers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    for tenant, seen, other in ((A, a_seen, B), (B, b_seen, A)):
        logged = await conn.fetch("SELECT fsa_id, version, delta_id::text FROM sms.deltas WHERE tenant_id = $1", tenant)
        log = sorted((row["fsa_id"], row["version"], row["delta_id"]) for row in logged)
        delivered = [(change["fsa_id"], change["version"], change["delta_id"]) for _, change in seen.events]
        assert [change["tenant_id"] for _, change in seen.events] == [tenant] * len(delivered)
        assert sorted(delivered) == log, "each of the tenant's deltas once, and nothing else"
        assert [event_id for event_id, _ in seen.events] == [f"{fsa}:{version}" for fsa, version, _ in delivered]
        assert not any(op["path"] == ["by"] and op["value"] == other for _, c in seen.events for op in c["ops"])
    assert len(a_seen.events) == writes_per_state * len(fsas) + 1


# ---------------------------------------------------------------- keys: the command line


async def test_keys_create_prints_the_key_once_and_stores_only_its_sha256(database_url, conn):
    """`sms keys create` prints the key alone on stdout (not on stderr); sms.api_keys holds its
    SHA-256 and what it may do, and the key text is in no column of any table."""
    result = await asyncio.to_thread(
        run_sms,
        *("keys", "create", "--tenant", A, "--tenant", B, "--scopes", "read,write", "--actor", "bot-a"),
        *("--aml", "3", "--label", "ci"),
        database_url=database_url,
    )
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    assert result.stdout == key + "\n", "stdout holds the key alone"
    assert looks_like_key(key), key
    secret = key[len("sms_k_123456789012_") :]
    assert key not in result.stderr and secret not in result.stderr

    rows = await conn.fetch("SELECT * FROM sms.api_keys")
    assert len(rows) == 1
    row = rows[0]
    assert bytes(row["secret_hash"]) == hashlib.sha256(key.encode()).digest()
    assert key == f"sms_{row['key_id']}_{secret}"
    assert (row["tenants"], row["scopes"], row["actor"], row["aml_level"], row["label"]) == (
        [A, B],
        ["read", "write"],
        "bot-a",
        3,
        "ci",
    )
    assert row["key_id"] in result.stderr  # the description names the key's id

    tables = await conn.fetch(
        """SELECT format('%I.%I', schemaname, tablename) AS name FROM pg_tables
            WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"""
    )
    assert len(tables) > 5
    for table_row in tables:
        found = await conn.fetchval(
            f"SELECT count(*) FROM {table_row['name']} t WHERE strpos(t::text, $1) > 0 OR strpos(t::text, $2) > 0",
            key,
            secret,
        )
        assert found == 0, f"the key's text is in {table_row['name']}"


async def test_keys_list_shows_keys_without_the_key(database_url, conn):
    """`sms keys list` names each key (id, tenants, scopes), never the key or its hash."""
    made = await asyncio.to_thread(
        run_sms, "keys", "create", "--tenant", A, "--scopes", "admin", "--label", "ops", database_url=database_url
    )
    key = made.stdout.strip()
    key_id = await conn.fetchval("SELECT key_id FROM sms.api_keys")
    secret_hash_hex = hashlib.sha256(key.encode()).hexdigest()
    listed = await asyncio.to_thread(run_sms, "keys", "list", database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    assert key_id in listed.stdout and A in listed.stdout and "admin" in listed.stdout and "ops" in listed.stdout
    output = listed.stdout + listed.stderr
    assert key not in output and key[len(f"sms_{key_id}_") :] not in output and secret_hash_hex not in output


async def test_keys_revoke_makes_the_key_401(database_url, conn, make_client):
    """`sms keys revoke ID`: the key that was served is a 401 from then on (cache off)."""
    made = await asyncio.to_thread(
        run_sms, "keys", "create", "--tenant", A, "--scopes", "read", database_url=database_url
    )
    key = made.stdout.strip()
    key_id = await conn.fetchval("SELECT key_id FROM sms.api_keys")
    async with make_client(**auth_on(key_cache_seconds=0)) as client:
        assert (await client.get(f"/state/{A}/{FSA}", headers=bearer(key))).status_code == 200
        revoked = await asyncio.to_thread(run_sms, "keys", "revoke", key_id, database_url=database_url)
        assert revoked.returncode == 0, revoked.stderr
        assert key_id in revoked.stdout
        assert await conn.fetchval("SELECT revoked_at IS NOT NULL FROM sms.api_keys WHERE key_id = $1", key_id)
        body = assert_unauthorized(await client.get(f"/state/{A}/{FSA}", headers=bearer(key)))
        assert "revoked" in body["detail"]


async def test_an_expired_key_is_401_saying_expired(db, make_client):
    """A key past its expiry is refused with 401, and the detail says it expired."""
    live = await make_key(db, [A], "read")
    expired = replace(NewKey.make([A], "read"), expires_at=datetime.now(UTC) - timedelta(minutes=1))
    await db.create_key(expired)
    async with make_client(**auth_on()) as client:
        assert (await client.get(f"/state/{A}/{FSA}", headers=bearer(live))).status_code == 200
        body = assert_unauthorized(await client.get(f"/state/{A}/{FSA}", headers=bearer(expired)))
        assert "expired" in body["detail"]


async def test_unknown_malformed_and_wrongly_sent_keys_are_401(db, make_client):
    """A key the service never made (well-formed or not), or one sent in another scheme, is a
    401 with WWW-Authenticate; the same key sent as X-API-Key is served."""
    known = await make_key(db, [A], "read")
    unknown = NewKey.make([A], "admin")  # never stored
    async with make_client(**auth_on()) as client:
        url = f"/state/{A}/{FSA}"
        assert (await client.get(url, headers={"X-API-Key": known.key})).status_code == 200
        for headers in (
            bearer(unknown),
            {"X-API-Key": unknown.key},
            bearer("sms_not_a_key"),
            bearer(known.key + "x"),
            {"Authorization": f"Basic {known.key}"},
            {"Authorization": "Bearer "},
        ):
            assert_unauthorized(await client.get(url, headers=headers))


# ---------------------------------------------------------------- keys over HTTP


async def test_an_admin_key_makes_keys_for_its_own_tenants_only(db, make_client):
    """POST /keys by A's admin key: a key for A is 201 with the key itself (once, not cached), and
    it works; a key naming B, or A and B, is 403; nothing is stored for the refused ones."""
    admin = await make_key(db, [A], "admin")
    async with make_client(**auth_on()) as client:
        made = await client.post("/keys", json={"tenants": [A], "scopes": ["read"]}, headers=bearer(admin))
        assert made.status_code == 201, made.text
        assert made.headers["cache-control"] == "no-store"
        body = made.json()
        assert body["key"].startswith(f"sms_{body['key_id']}_") and body["tenants"] == [A]
        assert "secret_hash" not in body
        assert (await client.get(f"/state/{A}/{FSA}", headers=bearer(body["key"]))).status_code == 200
        for tenants in ([B], [A, B]):
            refused = await client.post("/keys", json={"tenants": tenants, "scopes": ["read"]}, headers=bearer(admin))
            assert_problem(refused, 403, "forbidden")
        listed = (await client.get("/keys", headers=bearer(admin))).json()["keys"]
        assert sorted(key["key_id"] for key in listed) == sorted([admin.key_id, body["key_id"]])
        assert all("key" not in key and "secret_hash" not in key for key in listed)


async def test_a_key_made_over_http_has_no_higher_aml_level(db, make_client):
    """An admin key of AML 3 makes keys of AML ≤ 3; a higher one, or one with no limit, is 403."""
    admin = await make_key(db, [A], "admin", aml_level=3)
    async with make_client(**auth_on()) as client:
        for level in (4, 100, None):
            given = {"tenants": [A], "scopes": ["write"], "aml_level": level}
            assert_problem(await client.post("/keys", json=given, headers=bearer(admin)), 403, "forbidden")
        for level in (3, 1):
            given = {"tenants": [A], "scopes": ["write"], "aml_level": level}
            made = await client.post("/keys", json=given, headers=bearer(admin))
            assert made.status_code == 201, made.text
            assert made.json()["aml_level"] == level


async def test_an_actor_bound_admin_key_makes_keys_bound_to_its_actor(db, conn, make_client):
    """A key made by an admin key bound to actor "boss" writes as "boss" (whatever it claims);
    asking for another actor is 403."""
    admin = await make_key(db, [A], "admin", actor="boss")
    async with make_client(**auth_on()) as client:
        other_actor = {"tenants": [A], "scopes": ["write"], "actor": "eve"}
        assert_problem(await client.post("/keys", json=other_actor, headers=bearer(admin)), 403, "forbidden")
        made = await client.post("/keys", json={"tenants": [A], "scopes": ["write"]}, headers=bearer(admin))
        assert made.status_code == 201, made.text
        assert made.json()["actor"] == "boss"
        written = await client.post(
            f"/state/{A}/{FSA}/delta?actor=eve", json={"x": 1}, headers=bearer(made.json()["key"])
        )
        assert written.status_code == 200, written.text
    (row,) = await log_rows(conn, A, FSA)
    assert row["actor"] == "boss" and row["meta"]["claimed_actor"] == "eve"


async def test_get_keys_lists_only_keys_within_the_admins_tenants(db, make_client):
    """GET /keys: the keys naming only tenants of the admin key; not B's, not a key of A and B."""
    admin = await make_key(db, [A], "admin")
    own = await make_key(db, [A], "read")
    await make_key(db, [B], "admin")
    await make_key(db, [A, B], "read")
    async with make_client(**auth_on()) as client:
        response = await client.get("/keys", headers=bearer(admin))
    assert response.status_code == 200, response.text
    listed = response.json()["keys"]
    assert sorted(key["key_id"] for key in listed) == sorted([admin.key_id, own.key_id])
    assert all(set(key["tenants"]) == {A} for key in listed)


async def test_revoking_another_tenants_key_is_404_and_revokes_nothing(db, conn, make_client):
    """DELETE /keys/{id} of B's key by A's admin key: 404, and B's key still works; its own key
    of A is revoked (200) and is a 401 from then on."""
    admin = await make_key(db, [A], "admin")
    own = await make_key(db, [A], "read")
    theirs = await make_key(db, [B], "read")
    async with make_client(**auth_on()) as client:
        assert_problem(await client.delete(f"/keys/{theirs.key_id}", headers=bearer(admin)), 404, "not-found")
        assert_problem(await client.delete("/keys/k_nosuchkey000", headers=bearer(admin)), 404, "not-found")
        assert (await client.get(f"/state/{B}/{FSA}", headers=bearer(theirs))).status_code == 200
        revoked = await client.delete(f"/keys/{own.key_id}", headers=bearer(admin))
        assert revoked.status_code == 200, revoked.text
        assert revoked.json()["revoked_at"] is not None
        assert_unauthorized(await client.get(f"/state/{A}/{FSA}", headers=bearer(own)))
    assert await conn.fetchval("SELECT revoked_at FROM sms.api_keys WHERE key_id = $1", theirs.key_id) is None


# ---------------------------------------------------------------- protected mode


async def test_with_no_key_a_client_that_is_not_loopback_gets_403_protected_mode(make_client):
    """No key made, no --insecure-no-auth: the in-process client ("testclient", not loopback) is
    refused with 403 protected-mode, reads and writes alike; /health stays open."""
    async with make_client(**auth_on()) as client:
        assert (await client.get("/health")).status_code == 200
        assert_problem(await client.get(f"/state/{A}/{FSA}"), 403, "protected-mode")
        assert_problem(await client.post(f"/state/{A}/{FSA}/delta", json={"x": 1}), 403, "protected-mode")


async def test_with_no_key_a_loopback_client_is_served_until_a_key_exists(settings, db, conn):
    """No key made: a client on 127.0.0.1 is served (reads and writes). Once a key exists, the
    same loopback client without a key gets 401 with WWW-Authenticate, and with the key is served."""
    async with (
        serving(replace(settings, **auth_on(key_cache_seconds=0))) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS) as http,
    ):
        assert (await http.post(f"/state/{A}/{FSA}/delta", json={"x": 1})).status_code == 200
        assert (await http.get(f"/state/{A}/{FSA}")).json()["state"] == {"x": 1}
        key = await make_key(db, [A], "read")
        assert_unauthorized(await http.get(f"/state/{A}/{FSA}"))
        assert_unauthorized(await http.post(f"/state/{A}/{FSA}/delta", json={"x": 2}))
        assert (await http.get(f"/state/{A}/{FSA}", headers=bearer(key))).json()["state"] == {"x": 1}
        assert (await http.get("/health")).status_code == 200
    assert [row["ops"] for row in await log_rows(conn, A, FSA)] == [[{"op": "set", "path": ["x"], "value": 1}]]


async def test_once_a_key_exists_insecure_no_auth_no_longer_opens_anything(db, make_client):
    """--insecure-no-auth only matters while no key exists: after that, no key is a 401."""
    await make_key(db, [B], "read")
    async with make_client(**auth_on(insecure_no_auth=True)) as client:
        assert_unauthorized(await client.get(f"/state/{A}/{FSA}"))


async def test_auth_required_needs_a_key_for_everything_but_health_even_with_no_key(settings):
    """SMS_AUTH=required and no key made: a loopback client without a key gets 401 everywhere
    but /health and the OpenAPI document."""
    async with (
        serving(replace(settings, **auth_on(auth="required"))) as url,
        httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS) as http,
    ):
        assert (await http.get("/health")).status_code == 200
        assert (await http.get("/schema/openapi.json")).status_code == 200
        assert_unauthorized(await http.get(f"/state/{A}/{FSA}"))
        assert_unauthorized(await http.post(f"/state/{A}/{FSA}/delta", json={"x": 1}))
        assert_unauthorized(await http.get("/keys"))
        assert_unauthorized(await http.post("/keys", json={"tenants": [A], "scopes": ["admin"]}))


async def test_serve_on_a_public_address_with_no_key_refuses_to_start(database_url):
    """`sms serve --host 0.0.0.0` with no key in the database exits non-zero, naming
    --insecure-no-auth, before it listens."""
    port = free_port()
    result = await asyncio.to_thread(
        run_sms, "serve", "--host", "0.0.0.0", "--port", str(port), "--no-migrate", database_url=database_url
    )
    assert result.returncode != 0
    assert "--insecure-no-auth" in result.stderr
    assert "Uvicorn running" not in result.stderr + result.stdout


async def test_serve_on_a_public_address_with_insecure_no_auth_starts(database_url):
    """`sms serve --host 0.0.0.0 --insecure-no-auth` with no key starts and answers /health."""
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "app.cli", "serve", "--host", "0.0.0.0", "--port", str(port)),
        *("--no-migrate", "--insecure-no-auth"),
        env=sms_env(database_url),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        async with httpx.AsyncClient(timeout=5) as http:
            while True:
                assert process.returncode is None, (await process.stderr.read()).decode()
                assert time.monotonic() < deadline, "the service did not start"
                try:
                    response = await http.get(f"http://127.0.0.1:{port}/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert response.status_code == 200, response.text
    finally:
        if process.returncode is None:
            process.terminate()
        try:
            await asyncio.wait_for(process.communicate(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()


# ---------------------------------------------------------------- lineage and AML


@pytest.mark.parametrize("claim", ["query", "header"])
async def test_an_actor_bound_key_writes_as_its_actor_and_keeps_the_claim(claim, db, conn, make_client):
    """A key bound to actor "bot-a" writing as "mallory" (?actor= or X-Actor) — a delta, a
    replace, a rollback — is logged as "bot-a" with meta.claimed_actor "mallory"; claiming its
    own actor adds no claim."""
    key = await make_key(db, [A], "admin", actor="bot-a")
    headers = {**bearer(key), **({"X-Actor": "mallory"} if claim == "header" else {})}
    query = "actor=mallory" if claim == "query" else ""
    async with make_client(**auth_on()) as client:
        for url, body in (
            (f"/state/{A}/{FSA}/delta?{query}", {"x": 1}),
            (f"/state/{A}/{FSA}?{query}", {"x": 2}),
            (f"/state/{A}/{FSA}/rollback?to_version=1&{query}", None),
        ):
            response = await client.post(url, json=body, headers=headers)
            assert response.status_code == 200, response.text
        honest = await client.post(f"/state/{A}/{FSA}/delta?actor=bot-a", json={"x": 3}, headers=bearer(key))
        assert honest.status_code == 200, honest.text
    rows = await log_rows(conn, A, FSA)
    assert [row["actor"] for row in rows] == ["bot-a"] * 4
    assert [row["meta"].get("claimed_actor") for row in rows] == ["mallory"] * 3 + [None]


async def test_heartbeats_and_comments_of_an_actor_bound_key_use_its_actor(db, conn, make_client):
    """A heartbeat by an actor-bound key is logged with the key's actor; a comment's author is
    the key's actor, whatever author the request names."""
    await seed(conn)
    key = await make_key(db, [A], "write", actor="bot-a")
    async with make_client(**auth_on()) as client:
        beat = await client.post(f"/agents/{A}/{FSA}/mallory/heartbeat?actor=mallory", headers=bearer(key))
        assert beat.status_code == 200, beat.text
        said = await client.post(
            f"/tasks/{A}/{FSA}/{TASK}/comment", json={"author": "mallory", "body": "lgtm"}, headers=bearer(key)
        )
        assert said.status_code == 200, said.text
        assert said.json()["author"] == "bot-a"
    last = (await log_rows(conn, A, FSA))[-1]
    assert last["actor"] == "bot-a" and last["ops"][0]["path"] == ["agents_online", "mallory"]
    authors = await conn.fetch("SELECT author FROM sms.task_comments WHERE tenant_id = $1", A)
    assert [row["author"] for row in authors] == ["bot-a"]


async def test_a_key_s_aml_level_caps_what_a_request_claims(db, conn, make_client):
    """A key of AML 2: claiming 5 is logged as aml_level 2 with claimed_aml_level 5; claiming 1
    is logged as 1; claiming nothing is logged as the key's 2."""
    key = await make_key(db, [A], "write", aml_level=2)
    async with make_client(**auth_on()) as client:
        for query in ("?aml_level=5", "?aml_level=1", ""):
            response = await client.post(f"/state/{A}/{FSA}/delta{query}", json={"x": 1}, headers=bearer(key))
            assert response.status_code == 200, response.text
    metas = [row["meta"] for row in await log_rows(conn, A, FSA)]
    assert metas == [{"aml_level": 2, "claimed_aml_level": 5}, {"aml_level": 1}, {"aml_level": 2}]


async def test_without_a_key_the_claimed_aml_level_stands(client, conn):
    """Auth off (--insecure-no-auth, no key): the AML level the request claims is the one logged."""
    response = await client.post(f"/state/{A}/{FSA}/delta?aml_level=5", json={"x": 1})
    assert response.status_code == 200, response.text
    (row,) = await log_rows(conn, A, FSA)
    assert row["meta"]["aml_level"] == 5 and "claimed_aml_level" not in row["meta"]


# ---------------------------------------------------------------- rate limits


async def burst(clients: list, key: NewKey, requests: int) -> tuple[list[int], float]:
    """`requests` reads with `key`, round robin over `clients`, one after another: the statuses,
    and the seconds they took (only to bound how many tokens can have refilled meanwhile)."""
    started = time.monotonic()
    statuses = []
    for n in range(requests):
        response = await clients[n % len(clients)].get(f"/state/{A}/{FSA}", headers=bearer(key))
        assert response.status_code in (200, 429), response.text
        if response.status_code == 429:
            assert_problem(response, 429, "rate-limited")
            retry_after = response.headers["retry-after"]
            assert retry_after.isdigit() and int(retry_after) >= 1, retry_after
        statuses.append(response.status_code)
    return statuses, time.monotonic() - started


async def test_a_key_beyond_its_burst_gets_429_with_retry_after(db, make_client):
    """A key of 1 request/s (bursts of 2): its first 2 requests are served, and of 10 quick ones no
    more than the burst plus what refilled meanwhile; the rest are 429 rate-limited with a
    Retry-After of whole seconds ≥ 1. Another key is not limited by it."""
    key = await make_key(db, [A], "read", rate_limit=1)
    other = await make_key(db, [A], "read", rate_limit=1)
    async with make_client(**auth_on()) as client:
        statuses, seconds = await burst([client], key, 10)
        assert statuses[:2] == [200, 200]
        assert statuses.count(200) <= 2 + math.floor(seconds * 1), (statuses, seconds)
        assert 429 in statuses
        assert (await client.get(f"/state/{A}/{FSA}", headers=bearer(other))).status_code == 200


async def test_the_rate_limit_is_shared_by_two_workers_on_one_database(db, make_client):
    """Two app instances (two workers) on the same database share a key's bucket: of 12 quick
    requests alternating between them, at most the burst (2) plus what refilled meanwhile are
    served in total, not 2 per worker."""
    key = await make_key(db, [A], "read", rate_limit=1)
    async with (
        make_client(**auth_on()) as one,
        make_client(**auth_on()) as two,
    ):
        statuses, seconds = await burst([one, two], key, 12)
    assert statuses.count(200) >= 2
    assert statuses.count(200) <= 2 + math.floor(seconds * 1), (statuses, seconds)


async def test_a_key_with_a_fractional_rate_is_served(db, make_client):
    """A rate limit need not be a whole number: a key of 2.5 requests/s (bursts of 5) has its
    first request served, not a 500."""
    key = await make_key(db, [A], "read", rate_limit=2.5)
    async with make_client(**auth_on()) as client:
        response = await client.get(f"/state/{A}/{FSA}", headers=bearer(key))
    assert response.status_code == 200, response.text


async def test_a_key_slower_than_one_request_per_two_seconds_can_still_be_used(db, make_client):
    """Every key the service makes can make a request: a key of 1 request per 4 seconds (15 a
    minute; its bucket, 2 × the rate, would hold half a token) gets its first request served."""
    key = await make_key(db, [A], "read", rate_limit=0.25)
    async with make_client(**auth_on()) as client:
        response = await client.get(f"/state/{A}/{FSA}", headers=bearer(key))
    assert response.status_code == 200, (response.text, response.headers.get("retry-after"))
