"""Browsers cannot be turned against the service (DESIGN §10, app/api/auth.py): a page a browser
loads can send a write without a CORS preflight only as text/plain or a form, and can reach a local
instance under its own host name by DNS rebinding. So every write route refuses a body that is not
JSON (415) and an Origin that is neither configured nor its own (403), every route refuses a Host
it does not go by (400), and CORS headers go only to configured origins — with or without API keys,
and without changing anything."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import pytest
from helpers import TEST_HOST, apply_delta, assert_problem, listening
from litestar.testing import AsyncTestClient

from app.api.app import create_app
from app.domain.keys import NewKey

T, F = "t", "f"
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
MODES = ["no key", "admin key"]


def write_requests(spare_key_id: str) -> dict[tuple[str, str], tuple[str, object]]:
    """(method, route) -> (url, JSON body or None) of a request each write route serves, in an order
    in which they all succeed one after the other on the seeded state."""
    return {
        ("POST", "/state/{tenant_id:str}/{fsa_id:str}/delta"): (f"/state/{T}/{F}/delta", {"n": {"$inc": 1}}),
        ("POST", "/state/{tenant_id:str}/{fsa_id:str}/deltas"): (
            f"/state/{T}/{F}/deltas",
            [{"delta": {"n": {"$inc": 1}}}],
        ),
        ("POST", "/validate/delta"): (f"/validate/delta?tenant_id={T}&fsa_id={F}", {"n": 2}),
        ("POST", "/tasks/{tenant_id:str}/{fsa_id:str}/{task_id:str}/comment"): (
            f"/tasks/{T}/{F}/T1/comment",
            {"author": "someone", "body": "a comment"},
        ),
        ("POST", "/agents/{tenant_id:str}/{fsa_id:str}/{agent_path:path}"): (f"/agents/{T}/{F}/bot/heartbeat", None),
        ("POST", "/state/{tenant_id:str}/{fsa_id:str}"): (
            f"/state/{T}/{F}",
            {"tasks": {"T1": {"status": "OPEN"}}, "n": 10},
        ),
        ("POST", "/state/{tenant_id:str}/{fsa_id:str}/rollback"): (f"/state/{T}/{F}/rollback?to_version=1", None),
        ("PUT", "/state/{tenant_id:str}/{fsa_id:str}/aliases/{alias:str}"): (
            f"/state/{T}/{F}/aliases/job",
            {"collection": "tasks"},
        ),
        ("DELETE", "/state/{tenant_id:str}/{fsa_id:str}/aliases/{alias:str}"): (f"/state/{T}/{F}/aliases/job", None),
        ("PUT", "/state/{tenant_id:str}/{fsa_id:str}/policies"): (
            f"/state/{T}/{F}/policies",
            {"rules": [{"path": "n", "min": 0}]},
        ),
        ("PUT", "/tenants/{tenant_id:str}/policies"): (f"/tenants/{T}/policies", {"rules": [{"path": "m", "max": 9}]}),
        ("PUT", "/state/{tenant_id:str}/{fsa_id:str}/ttl"): (f"/state/{T}/{F}/ttl", {"expires_after": "7d"}),
        ("DELETE", "/state/{tenant_id:str}/{fsa_id:str}/ttl"): (f"/state/{T}/{F}/ttl", None),
        ("POST", "/state/{tenant_id:str}/{fsa_id:str}/compact"): (f"/state/{T}/{F}/compact?before_version=1", None),
        ("POST", "/keys"): ("/keys", {"tenants": [T], "scopes": ["read"]}),
        ("DELETE", "/keys/{key_id:str}"): (f"/keys/{spare_key_id}", None),
        ("DELETE", "/state/{tenant_id:str}/{fsa_id:str}"): (f"/state/{T}/{F}", None),  # the purge, last
    }


def app_write_routes(settings) -> set[tuple[str, str]]:
    """Every (method, route) of the app that writes, from its routing table."""
    return {
        (method, route.path)
        for route in create_app(settings, settings.database_url).routes
        for method in getattr(route, "methods", ())
        if method in WRITE_METHODS
    }


async def everything(conn: asyncpg.Connection) -> dict[str, str | None]:
    """A digest of every row of every table of schema sms, as the owner sees them."""
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = 'sms' AND c.relkind IN ('r', 'p') ORDER BY 1"
    )
    return {
        row["relname"]: await conn.fetchval(
            f"SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM sms.{row['relname']} t"
        )
        for row in tables
    }


@pytest.fixture
async def seeded(conn: asyncpg.Connection) -> asyncpg.Connection:
    """State t/f at version 1 with task T1 (for comments and rollbacks) and the alias job."""
    await apply_delta(conn, {"tasks.T1.status": "OPEN", "n": 0}, T, F)
    await conn.execute("SELECT sms.set_alias($1, $2, 'job', 'tasks')", T, F)
    return conn


@pytest.fixture(params=MODES)
async def browser(request, seeded, db, make_client) -> AsyncIterator[tuple[AsyncTestClient, str]]:
    """(client, id of a key it may revoke): with no key made (every client served, as in protected
    mode to a loopback client), or with an admin key sent on every request."""
    async with make_client(rate_limit=0) as client:
        if request.param == "no key":
            yield client, "k_NoSuchKey0"
            return
        admin, spare = NewKey.make([T], "admin"), NewKey.make([T], "read")
        for key in (admin, spare):
            await db.create_key(key)
        client.headers["Authorization"] = f"Bearer {admin.key}"
        yield client, spare.key_id


def as_json(body: object) -> bytes:
    return json.dumps(body if body is not None else {}).encode()


# What a page can send without a CORS preflight (a form, or fetch with a text/plain or untyped body).
NOT_JSON = {
    "text/plain": lambda body: {"content": as_json(body), "headers": {"Content-Type": "text/plain"}},
    "text/plain;charset=UTF-8": lambda body: {
        "content": as_json(body),
        "headers": {"Content-Type": "text/plain;charset=UTF-8"},
    },
    "a form": lambda body: {"data": {"payload": as_json(body).decode()}},
    "a multipart form": lambda body: {"files": {"payload": ("delta.json", as_json(body), "application/json")}},
    "no Content-Type": lambda body: {"content": as_json(body)},
}


async def test_every_write_route_serves_its_json_request(settings, seeded, db, make_client):
    """The requests the refusals below are made of are good ones: sent as JSON (with a charset) each
    write route serves them. Every write route of the app has one."""
    admin, spare = NewKey.make([T], "admin"), NewKey.make([T], "read")
    for key in (admin, spare):
        await db.create_key(key)
    requests = write_requests(spare.key_id)
    assert set(requests) == app_write_routes(settings), "a write route without a request in write_requests()"
    headers = {"Authorization": f"Bearer {admin.key}", "Content-Type": "application/json; charset=utf-8"}
    async with make_client(rate_limit=0) as client:
        for (method, _), (url, body) in requests.items():
            content = None if body is None else json.dumps(body).encode()
            response = await client.request(method, url, content=content, headers=headers)
            assert response.status_code in (200, 201), (method, url, response.text)
    assert await seeded.fetchval("SELECT revoked_at IS NOT NULL FROM sms.api_keys WHERE key_id = $1", spare.key_id)


async def test_bodies_that_are_not_json_are_refused_by_every_write_route(browser, seeded, database_url):
    """text/plain, form and multipart bodies, and bodies without a type: 415 unsupported-media-type
    from every write route, with nothing changed and nothing notified."""
    client, spare_key_id = browser
    before = await everything(seeded)
    statuses = {}
    async with listening(database_url) as feed:
        for (method, _), (url, body) in write_requests(spare_key_id).items():
            for kind, request in NOT_JSON.items():
                response = await client.request(method, url, **request(body))
                if kind == "no Content-Type":
                    assert "content-type" not in response.request.headers
                statuses[method, url, kind] = response.status_code
                if response.status_code == 415:
                    assert_problem(response, 415, "unsupported-media-type")
        await feed.assert_silent()
    assert {request: status for request, status in statuses.items() if status != 415} == {}
    assert await everything(seeded) == before


async def test_json_media_types_are_accepted(client, seeded):
    """application/json with a charset, and the +json types (Merge Patch, JSON Patch) are writes."""
    for content_type, body, expected in (
        ("application/json; charset=utf-8", {"a": 1}, {"a": 1}),
        ("application/merge-patch+json", {"b": {"c": 2}}, {"b": {"c": 2}}),
        ("application/json-patch+json", [{"op": "add", "path": "/d", "value": 3}], {"d": 3}),
    ):
        response = await client.post(
            f"/state/{T}/{F}/delta", content=json.dumps(body).encode(), headers={"Content-Type": content_type}
        )
        assert response.status_code == 200, (content_type, response.text)
        state = (await client.get(f"/state/{T}/{F}")).json()["state"]
        assert {key: state.get(key) for key in expected} == expected, content_type


# ---------------------------------------------------------------- Host (DNS rebinding)

FOREIGN_HOSTS = [
    "evil.example",
    "evil.example:8080",
    "localhost.evil.example",
    "127.0.0.1.nip.io",
    f"{TEST_HOST}.evil.example",
    "[::2]:8080",
]
LOOPBACK_HOSTS = ["localhost", "localhost:8080", "127.0.0.1", "127.0.0.1:8080", "[::1]", "[::1]:8080"]


async def test_a_foreign_host_is_refused_for_reads_and_writes(client, seeded, database_url):
    """A Host the service does not go by — what a page served under another name reaches by DNS
    rebinding — gets 400 invalid-host on every kind of route, public ones too, and changes nothing."""
    before = await everything(seeded)
    async with listening(database_url) as feed:
        for host in FOREIGN_HOSTS:
            headers = {"Host": host}
            for response in (
                await client.get(f"/state/{T}/{F}", headers=headers),
                await client.get(f"/state/{T}/{F}/deltas", headers=headers),
                await client.get("/health", headers=headers),
                await client.post(f"/state/{T}/{F}/delta", json={"n": 5}, headers=headers),
                await client.post(f"/state/{T}/{F}/rollback?to_version=0", headers=headers),
            ):
                assert_problem(response, 400, "invalid-host")
        await feed.assert_silent()
    assert await everything(seeded) == before


async def test_loopback_hosts_are_served(client, seeded):
    """localhost, 127.0.0.1 and [::1], with or without a port, and the configured host (in any case)
    are served, reads and writes."""
    for host in [*LOOPBACK_HOSTS, TEST_HOST, TEST_HOST.upper()]:
        read = await client.get(f"/state/{T}/{F}", headers={"Host": host})
        assert read.status_code == 200, (host, read.text)
        write = await client.post(f"/state/{T}/{F}/delta", json={"n": {"$inc": 1}}, headers={"Host": host})
        assert write.status_code == 200, (host, write.text)
    assert await seeded.fetchval("SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", T, F) == 9


async def test_a_host_in_allowed_hosts_is_served_and_only_it(seeded, make_client):
    """allowed_hosts lists the names served besides loopback; a suffix or prefix of one is not it."""
    async with make_client(allowed_hosts=("sms.example.com",)) as client:
        for host in ("sms.example.com", "sms.example.com:443", "SMS.example.com"):
            assert (await client.get(f"/state/{T}/{F}", headers={"Host": host})).status_code == 200, host
        for host in ("evil.example", "api.sms.example.com", TEST_HOST):
            assert_problem(await client.get(f"/state/{T}/{F}", headers={"Host": host}), 400, "invalid-host")
        assert (await client.get(f"/state/{T}/{F}", headers={"Host": "localhost:8080"})).status_code == 200


async def test_the_address_the_service_is_bound_to_is_served(seeded, make_client):
    """The host the service listens on (SMS_HOST) is one of its names."""
    async with make_client(host="sms.internal", allowed_hosts=()) as client:
        assert (await client.get(f"/state/{T}/{F}", headers={"Host": "sms.internal:8080"})).status_code == 200
        assert_problem(await client.get(f"/state/{T}/{F}", headers={"Host": "evil.example"}), 400, "invalid-host")


async def test_allowed_hosts_star_serves_any_host(seeded, make_client):
    """allowed_hosts=("*",) turns the Host check off: any name is served."""
    async with make_client(allowed_hosts=("*",)) as client:
        for host in FOREIGN_HOSTS:
            assert (await client.get(f"/state/{T}/{F}", headers={"Host": host})).status_code == 200, host
            write = await client.post(f"/state/{T}/{F}/delta", json={"n": {"$inc": 1}}, headers={"Host": host})
            assert write.status_code == 200, host


# ---------------------------------------------------------------- Origin (CSRF)

FOREIGN_ORIGINS = [
    "https://evil.example",
    "null",  # sandboxed frames, file: pages, some redirects
    f"http://{TEST_HOST}.evil.example",
    "http://localhost:3000",  # another local dev server's page
    f"http://{TEST_HOST}:8443",  # another port is another origin
]


async def test_a_foreign_origin_is_refused_by_every_write_route(browser, seeded, database_url):
    """A write whose Origin is neither configured nor the request's own host gets 403
    forbidden-origin, JSON body or none (rollback, heartbeat), and changes nothing."""
    client, spare_key_id = browser
    before = await everything(seeded)
    statuses = {}
    async with listening(database_url) as feed:
        for (method, _), (url, body) in write_requests(spare_key_id).items():
            for origin in FOREIGN_ORIGINS:
                response = await client.request(method, url, json=body, headers={"Origin": origin})
                statuses[method, url, origin] = response.status_code
                if response.status_code == 403:
                    assert_problem(response, 403, "forbidden-origin")
        await feed.assert_silent()
    assert {request: status for request, status in statuses.items() if status != 403} == {}
    assert await everything(seeded) == before


async def test_a_bodyless_post_from_a_foreign_origin_is_refused(client, seeded):
    """A form-less POST needs no body to do harm: a rollback or a heartbeat from another origin."""
    before = await everything(seeded)
    for url in (f"/state/{T}/{F}/rollback?to_version=0", f"/agents/{T}/{F}/bot/heartbeat"):
        response = await client.post(url, headers={"Origin": "https://evil.example"})
        assert_problem(response, 403, "forbidden-origin")
    assert await everything(seeded) == before


async def test_the_same_origin_and_configured_origins_may_write(seeded, make_client):
    """An Origin that is the request's own host (with its port) or one of cors_origins may write;
    another one, or the same host on another port, may not."""
    async with make_client(cors_origins=("https://app.example",)) as client:
        for origin, host in (
            (f"http://{TEST_HOST}", TEST_HOST),
            ("http://127.0.0.1:8080", "127.0.0.1:8080"),
            ("http://[::1]:8080", "[::1]:8080"),
            ("https://app.example", TEST_HOST),
        ):
            response = await client.post(
                f"/state/{T}/{F}/delta", json={"n": {"$inc": 1}}, headers={"Origin": origin, "Host": host}
            )
            assert response.status_code == 200, (origin, response.text)
        for origin, host in (("https://evil.example", TEST_HOST), ("http://127.0.0.1:9090", "127.0.0.1:8080")):
            response = await client.post(
                f"/state/{T}/{F}/delta", json={"n": 1}, headers={"Origin": origin, "Host": host}
            )
            assert_problem(response, 403, "forbidden-origin")
    assert await seeded.fetchval("SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", T, F) == 5


# ---------------------------------------------------------------- CORS


def preflight(client: AsyncTestClient, origin: str, method: str = "POST"):
    return client.options(
        f"/state/{T}/{F}/delta",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )


def assert_no_credentials_with_star(response) -> None:
    if response.headers.get("access-control-allow-origin") == "*":
        assert response.headers.get("access-control-allow-credentials", "").lower() != "true"


async def test_without_cors_origins_no_response_allows_any_origin(client, seeded):
    """CORS is off unless configured: no preflight or response carries an Access-Control-* header,
    so no page of another origin may read an answer."""
    for origin in ("https://evil.example", "https://app.example", "null", f"http://{TEST_HOST}"):
        for response in (
            await preflight(client, origin),
            await preflight(client, origin, "PUT"),
            await client.get(f"/state/{T}/{F}", headers={"Origin": origin}),
            await client.get("/health", headers={"Origin": origin}),
        ):
            cors = {name: value for name, value in response.headers.items() if name.startswith("access-control-")}
            assert cors == {}, (origin, response.request.method)


async def test_cors_allows_exactly_the_configured_origins(seeded, make_client):
    """With cors_origins=("https://app.example",) that origin, exactly, is allowed (never "*");
    another origin, a lookalike or the same host over http gets no Access-Control-Allow-Origin."""
    async with make_client(cors_origins=("https://app.example",)) as client:
        allowed = [
            await preflight(client, "https://app.example"),
            await preflight(client, "https://app.example", "DELETE"),
            await client.get(f"/state/{T}/{F}", headers={"Origin": "https://app.example"}),
        ]
        for response in allowed:
            assert response.headers.get("access-control-allow-origin") == "https://app.example", response.headers
        assert (await client.get(f"/state/{T}/{F}", headers={"Origin": "https://app.example"})).json()["version"] == 1
        for origin in ("https://evil.example", "https://app.example.evil.example", "http://app.example", "null"):
            for response in (
                await preflight(client, origin),
                await client.get(f"/state/{T}/{F}", headers={"Origin": origin}),
            ):
                assert "access-control-allow-origin" not in response.headers, (origin, response.headers)


async def test_cors_credentials_are_never_allowed_with_a_star(seeded, make_client):
    """cors_origins=("*",) allows any origin, never with Access-Control-Allow-Credentials: true."""
    async with make_client(cors_origins=("*",)) as client:
        for origin in ("https://evil.example", "https://app.example"):
            for response in (
                await preflight(client, origin),
                await client.get(f"/state/{T}/{F}", headers={"Origin": origin}),
            ):
                assert response.headers.get("access-control-allow-origin") in ("*", origin)
                assert_no_credentials_with_star(response)
                if response.headers.get("access-control-allow-origin") == origin:
                    # an origin echoed for any origin is a star in disguise: no credentials either
                    assert response.headers.get("access-control-allow-credentials", "").lower() != "true"
