"""Watching the service run (DESIGN §14), against a real PostgreSQL:

- GET /metrics in Prometheus's format: requests by route template and status (an unknown path as
  `unmatched`), deltas applied and refused by reason, group-commit batch sizes, slice-cache hits
  and misses, feed subscribers and lag, pool usage, listener reconnects; no label names a tenant;
  an admin key reads it (anyone with SMS_METRICS_PUBLIC).
- Request ids: a sane X-Request-ID is echoed, any other replaced by a fresh one.
- Traces (SMS_TRACING, the otel extra), caught by the SDK's in-memory exporter: a request with a
  traceparent is a span of that trace, child of the caller's span, carrying the delta's version;
  without SMS_TRACING no span is made; asked for without OpenTelemetry, the start fails clearly.
- Logs: one line per request with its id, tenant, actor, route, status and duration; a real
  `sms serve` with SMS_LOG_FORMAT=json writes nothing but JSON lines, and neither the API key nor
  the passwords of its database URLs, from its start to its exit.
- Health: /health/live answers; /health/ready is 503 on a database one revision behind and 200
  once it is migrated, 503 while draining (in process, and in a real `sms serve` after SIGTERM
  with SMS_DRAIN_SECONDS, which serves on meanwhile).

Waits are bounded only as hang guards; nothing asserts on wall-clock time.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import asyncpg
import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory
from helpers import ROOT, TENANT, assert_problem, service_settings, sms_env
from litestar.testing import AsyncTestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families
from test_auth import auth_on, bearer, make_key

from app import logs
from app.api.app import begin_shutdown, create_app
from app.db import migrate

WAIT_SECONDS = 60.0  # hang guard for anything awaited here
DELTA = f"/state/{TENANT}/f/delta"
DELTA_ROUTE = "/state/{tenant_id}/{fsa_id}/delta"
DURATION = "sms_http_request_duration_seconds"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(client: Any, **headers: str) -> Samples:
    """Every sample GET /metrics shows, by name and labels."""
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(check: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not await check():
        assert time.monotonic() < deadline, f"not within {WAIT_SECONDS:.0f} s: {what}"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- metrics


async def test_deltas_are_counted_applied_or_refused_by_reason(client):
    before = await scrape(client)
    assert (await client.post(DELTA, json={"n": 1})).status_code == 200
    assert (await client.post(f"/state/{TENANT}/f", json={"n": 2})).status_code == 200  # a replace is a delta
    assert_problem(await client.post(DELTA, json={"n": 3, "$expect": {"n": 9}}), 409, "expectation-failed")
    assert (await client.put(f"/state/{TENANT}/f/policies", json={"rules": [{"path": "n", "max": 5}]})).is_success
    assert_problem(await client.post(DELTA, json={"n": 6}), 422, "policy-violation")
    malformed = await client.post(DELTA, content=b"{", headers={"content-type": "application/json"})
    assert_problem(malformed, 400, "malformed-request")
    batch = await client.post(f"/state/{TENANT}/f/deltas", json=[{"delta": {"n": 4}}, {"delta": {"n": 7}}])
    assert batch.json()["applied"] == 1
    after = await scrape(client)

    assert value(after, "sms_deltas_applied_total") - value(before, "sms_deltas_applied_total") == 3
    refused = {
        reason: value(after, "sms_deltas_refused_total", reason=reason)
        - value(before, "sms_deltas_refused_total", reason=reason)
        for reason in ("conflict", "policy", "validation", "aborted", "unavailable", "other")
    }
    assert refused == {"conflict": 1, "policy": 2, "validation": 1, "aborted": 0, "unavailable": 0, "other": 0}


async def test_requests_are_counted_by_route_template_and_status_never_by_raw_path(client):
    tenant = "tenant-" + uuid.uuid4().hex  # to be found nowhere in the metrics
    labels = {"method": "POST", "route": DELTA_ROUTE}
    before = await scrape(client)
    assert (await client.post(f"/state/{tenant}/f/delta", json={"n": 1})).status_code == 200
    assert (await client.post(f"/state/{tenant}/f/delta", json={"n": {"$inc": "x"}})).status_code == 422
    assert (await client.get(f"/no/such/{tenant}")).status_code == 404
    response = await client.get("/metrics")
    after = await scrape(client)

    count = DURATION + "_count"
    assert value(after, count, **labels, status="200") - value(before, count, **labels, status="200") == 1
    assert value(after, count, **labels, status="422") - value(before, count, **labels, status="422") == 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, count, **unmatched) - value(before, count, **unmatched) == 1
    assert value(after, DURATION + "_sum", **labels, status="200") > value(
        before, DURATION + "_sum", **labels, status="200"
    )
    assert tenant not in response.text
    routes = {dict(labels)["route"] for name, labels in after if name == count}
    assert all(route == "unmatched" or (route.startswith("/") and ":" not in route) for route in routes), routes


async def test_slice_summaries_count_cache_misses_and_hits(client):
    assert (await client.post(DELTA, json={"tasks": {"T1": {"status": "OPEN"}}})).status_code == 200
    before = await scrape(client)
    first = await client.get(f"/state/{TENANT}/f/slice", params={"slice": "tasks"})
    second = await client.get(f"/state/{TENANT}/f/slice", params={"slice": "tasks"})
    after = await scrape(client)
    assert (first.json()["cached"], second.json()["cached"]) == (False, True)
    for result in ("miss", "hit"):
        name = "sms_slice_summary_cache_total"
        assert value(after, name, result=result) - value(before, name, result=result) == 1


async def test_group_commit_batch_sizes_add_up_to_the_deltas_sent(live_url, conn):
    """Every delta is in exactly one transaction's observation, so the sizes sum to the deltas sent;
    deltas that wait together for a busy state go as batches of more than one."""
    writes = 60
    name = "sms_group_commit_batch_size"
    async with httpx.AsyncClient(base_url=live_url, timeout=WAIT_SECONDS) as http:
        before = await scrape(http)
        # the state is busy (a psql user holds it) until every write is in the service
        async with conn.transaction():
            await conn.fetchval("SELECT sms.lock_state($1, 'f')", TENANT)
            sent = [asyncio.create_task(http.post(DELTA, json={f"w{i}": i})) for i in range(writes)]
            await until(
                lambda: _gauge_at_least(http, "sms_http_requests_in_flight", writes + 1), "every write in flight"
            )
        answers = await asyncio.gather(*sent)
        assert all(answer.status_code == 200 for answer in answers)
        after = await scrape(http)

    assert value(after, name + "_sum") - value(before, name + "_sum") == writes
    alone = value(after, name + "_bucket", le="1.0") - value(before, name + "_bucket", le="1.0")
    transactions = value(after, name + "_count") - value(before, name + "_count")
    assert transactions - alone >= 1  # they did meet
    assert transactions < writes


async def _gauge_at_least(http: httpx.AsyncClient, name: str, least: float) -> bool:
    return value(await scrape(http), name) >= least


async def test_pool_and_feed_gauges_and_the_feed_lag(settings, live_url):
    async with httpx.AsyncClient(base_url=live_url, timeout=httpx.Timeout(10, read=None)) as http:
        samples = await scrape(http)
        assert value(samples, "sms_db_pool_max_size") == settings.pool_max_size
        assert 1 <= value(samples, "sms_db_pool_size") <= settings.pool_max_size
        assert value(samples, "sms_feed_subscribers") == 0
        lag_before = value(samples, "sms_feed_lag_seconds_count")

        async with http.stream("GET", f"/state/{TENANT}/f/events", headers={"Accept": "text/event-stream"}) as sse:
            assert sse.status_code == 200
            lines = sse.aiter_lines()

            async def following() -> bool:
                samples = await scrape(http)
                return value(samples, "sms_feed_subscribers") == 1 and value(samples, "sms_feed_readers") == 1

            await until(following, "the stream's subscription and its reader")
            assert (await http.post(DELTA, json={"n": 1})).status_code == 200
            async with asyncio.timeout(WAIT_SECONDS):
                async for line in lines:
                    if line.startswith("event: change"):
                        break
            samples = await scrape(http)
            assert value(samples, "sms_feed_lag_seconds_count") - lag_before >= 1
        await until(lambda: _gauge_is(http, "sms_feed_subscribers", 0), "the subscription ended with the stream")


async def _gauge_is(http: httpx.AsyncClient, name: str, expected: float) -> bool:
    return value(await scrape(http), name) == expected


async def test_listener_reconnects_are_counted(client, conn):
    before = value(await scrape(client), "sms_listener_reconnects_total")
    listener = client.app.state.feed.listener
    await until(lambda: _true(listener.connected.is_set()), "the listener connected")
    assert await conn.fetchval("SELECT pg_terminate_backend($1::int)", listener.backend_pid)  # Citus adds a bigint one

    async def reconnected() -> bool:
        samples = await scrape(client)
        return (
            value(samples, "sms_listener_reconnects_total") > before and value(samples, "sms_listener_connected") == 1
        )

    await until(reconnected, "the listener reconnected")


async def _true(condition: bool) -> bool:
    return condition


async def test_metrics_want_an_admin_key_unless_made_public(db, make_client):
    reader = await make_key(db, [TENANT], "read")
    admin = await make_key(db, ["ops"], "admin")  # of any tenant: no label names one
    async with make_client(**auth_on()) as client:
        assert_problem(await client.get("/metrics"), 401, "unauthorized")
        assert_problem(await client.get("/metrics", headers=bearer(reader)), 403, "insufficient-scope")
        await scrape(client, **bearer(admin))
    async with make_client(**auth_on(metrics_public=True)) as client:
        await scrape(client)


# ---------------------------------------------------------------- pauses


async def test_what_the_service_holds_while_it_serves_is_kept_from_the_cycle_collector(settings):
    """Each full collection of the cycle collector walked everything the service holds — a pause of
    ~70 ms about once a second under load, the p99 of a hot state. While it serves, what it held when
    it started is frozen out of the collector (gc.freeze); when it stops, given back, so that a
    stopped app can still be collected."""
    frozen_before = gc.get_freeze_count()
    app = create_app(settings, settings.database_url)
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/health/live")).status_code == 200
        assert gc.get_freeze_count() > frozen_before
    assert gc.get_freeze_count() == 0


# ---------------------------------------------------------------- request ids and the request log


async def test_a_sane_request_id_is_echoed_and_any_other_replaced(client):
    given = "req-42.a:b_c"
    assert (await client.get("/health/live", headers={"X-Request-ID": given})).headers["x-request-id"] == given
    for insane in ("a b", "x" * 129, "é".encode(), ""):
        answer = (await client.get("/health/live", headers={"X-Request-ID": insane})).headers["x-request-id"]
        assert re.fullmatch("[0-9a-f]{32}", answer), answer
    first, second = [(await client.get("/nothing")).headers["x-request-id"] for _ in range(2)]
    assert first != second  # problems too carry one, a fresh one each


async def test_each_request_is_one_log_line_with_its_id_tenant_actor_route_status_and_duration(db, make_client, caplog):
    key = await make_key(db, [TENANT], "write", actor="bot-7")
    caplog.set_level(logging.INFO, logger="app.requests")
    async with make_client(**auth_on()) as client:
        headers = {**bearer(key), "X-Request-ID": "trace-me-1"}
        assert (await client.post(DELTA, json={"n": 1}, headers=headers)).status_code == 200
        assert (await client.get("/health/live", headers={"X-Request-ID": "trace-me-2", "X-Actor": "ann"})).is_success
    lines = {record.fields["request_id"]: record for record in caplog.records if record.name == "app.requests"}
    write = lines["trace-me-1"].fields
    assert write["tenant"] == TENANT and write["actor"] == "bot-7" and write["key_id"] == key.key_id
    assert (write["method"], write["route"], write["status"]) == ("POST", DELTA_ROUTE, 200)
    assert write["duration_ms"] >= 0 and write["path"] == DELTA
    assert lines["trace-me-2"].fields["actor"] == "ann"  # no key names one: the request's claim
    assert all(key.key not in record.getMessage() + json.dumps(record.fields) for record in caplog.records)


async def test_request_lines_can_be_turned_off(make_client, caplog):
    caplog.set_level(logging.INFO, logger="app.requests")
    async with make_client(request_log=False) as client:
        assert (await client.get("/health/live")).status_code == 200
    assert [record for record in caplog.records if record.name == "app.requests"] == []


# ---------------------------------------------------------------- traces


@pytest.fixture(scope="module")
def spans() -> InMemorySpanExporter:
    """Spans the process makes, caught in memory (the SDK's exporter for tests)."""
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


async def test_a_request_continues_the_callers_trace_and_its_span_carries_the_deltas_version(make_client, spans):
    spans.clear()
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    async with make_client(tracing=True) as client:
        response = await client.post(
            DELTA, json={"n": 1}, headers={"traceparent": f"00-{trace_id}-{parent_id}-01", "X-Request-ID": "r-1"}
        )
        assert response.status_code == 200
    (span,) = [span for span in spans.get_finished_spans() if span.attributes.get("sms.request_id") == "r-1"]
    assert span.name == f"POST {DELTA_ROUTE}"
    assert span.kind == trace.SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == trace_id
    assert span.parent is not None and span.parent.is_remote and format(span.parent.span_id, "016x") == parent_id
    assert span.attributes["sms.version"] == response.json()["version"] == 1
    assert span.attributes["http.route"] == DELTA_ROUTE and span.attributes["http.response.status_code"] == 200


async def test_without_tracing_no_span_is_made(client, spans):
    spans.clear()
    response = await client.post(DELTA, json={"n": 1}, headers={"traceparent": f"00-{uuid.uuid4().hex}-{'1' * 16}-01"})
    assert response.status_code == 200
    assert spans.get_finished_spans() == ()


def test_tracing_without_opentelemetry_stops_the_start_naming_the_extra(settings, monkeypatch):
    monkeypatch.setitem(sys.modules, "opentelemetry", None)  # as if the extra were not installed
    with pytest.raises(SystemExit, match=r"state-memory-service\[otel\]"):
        create_app(replace(settings, tracing=True), settings.database_url)


# ---------------------------------------------------------------- health


async def test_live_and_ready_answer_on_a_migrated_database(client):
    assert (await client.get("/health/live")).json() == {"status": "ok"}
    head, _ = migrate.revisions()
    assert (await client.get("/health/ready")).json() == {"status": "ready", "schema_revision": head}
    assert (await client.get("/health")).json()["status"] == "ok"  # kept as it was


async def test_ready_flips_when_the_database_is_migrated_to_head(empty_database_url):
    script = ScriptDirectory.from_config(migrate.alembic_config(empty_database_url))
    head = script.get_current_head()
    previous = script.get_revision(head).down_revision
    await asyncio.to_thread(migrate.upgrade, empty_database_url, previous)
    settings = service_settings(empty_database_url, pool_min_size=1, pool_max_size=4)
    async with AsyncTestClient(app=create_app(settings, empty_database_url)) as client:
        body = assert_problem(await client.get("/health/ready"), 503, "not-ready")
        assert head in body["detail"] and "sms migrate" in body["detail"]
        assert (await client.get("/health/live")).status_code == 200

        await asyncio.to_thread(migrate.upgrade, empty_database_url)
        assert (await client.get("/health/ready")).json() == {"status": "ready", "schema_revision": head}


async def test_ready_is_503_while_the_database_is_out_of_reach_and_200_once_back(client, pg_server, database_url):
    database = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
    admin = await asyncpg.connect(pg_server.url("postgres"))
    try:
        # new connections are refused, and the service's go
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", database)
        body = assert_problem(await client.get("/health/ready"), 503, "not-ready")
        assert "database" in body["detail"]
        assert (await client.get("/health/live")).status_code == 200
    finally:
        await admin.execute(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS true')
        await admin.close()
    assert (await client.get("/health/ready")).status_code == 200


async def test_a_database_at_a_revision_from_a_later_release_is_ready(client, conn):
    """A rolling upgrade: nodes of the previous release keep serving once the new one migrated."""
    await conn.execute("UPDATE public.alembic_version SET version_num = '9999_later'")
    assert (await client.get("/health/ready")).json() == {"status": "ready", "schema_revision": "9999_later"}


async def test_ready_is_503_while_draining_and_the_rest_still_answers(client):
    assert (await client.get("/health/ready")).status_code == 200
    begin_shutdown(client.app)
    body = assert_problem(await client.get("/health/ready"), 503, "not-ready")
    assert "shutting down" in body["detail"]
    assert (await client.get("/health/live")).status_code == 200
    assert (await client.get("/health")).status_code == 200


# ---------------------------------------------------------------- a real `sms serve`


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.asynccontextmanager
async def sms_serve(database_url: str, log_path: Any, **settings: str) -> AsyncIterator[tuple[Any, str]]:
    """`sms serve` on `database_url` with `settings`, its output in `log_path`; yields (process,
    base URL) once /health/ready answers 200. Killed afterwards if still running."""
    port = free_port()
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.cli",
            "serve",
            "--port",
            str(port),
            env={**sms_env(database_url), **settings},
            cwd=ROOT,
            stdout=log_file,
            stderr=asyncio.subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        async with httpx.AsyncClient(base_url=url, timeout=5) as http:
            while True:
                assert process.returncode is None, log_path.read_text()[-3000:]
                assert time.monotonic() < deadline, log_path.read_text()[-3000:]
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/health/ready")).status_code == 200:
                        break
                await asyncio.sleep(0.1)
        yield process, url
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def exit_status(process: Any) -> int:
    return await asyncio.wait_for(process.wait(), WAIT_SECONDS)


@pytest.fixture
async def password_roles(pg_server, database_url) -> AsyncIterator[tuple[str, str, list[str]]]:
    """The test database as two roles with passwords: an owner (superuser) and a service role (a
    member of sms_api); yields (owner URL, service URL, the passwords). Dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    owner, api = f"obs_owner_{suffix}", f"obs_api_{suffix}"
    passwords = [f"pw-owner-{uuid.uuid4().hex}", f"pw-api-{uuid.uuid4().hex}"]
    admin = await asyncpg.connect(database_url)  # on Citus, where roles made reach the workers too
    try:
        await admin.execute(f"CREATE ROLE {owner} LOGIN SUPERUSER PASSWORD '{passwords[0]}'")
        await admin.execute(f"CREATE ROLE {api} LOGIN INHERIT PASSWORD '{passwords[1]}' IN ROLE sms_api")
        dbname = psycopg.conninfo.conninfo_to_dict(database_url)["dbname"]
        yield (
            replace(pg_server, user=owner, password=passwords[0]).url(dbname),
            replace(pg_server, user=api, password=passwords[1]).url(dbname),
            passwords,
        )
    finally:
        for role in (owner, api):
            # its sessions may outlive the service by a moment
            await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", role)
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.close()


async def test_json_logs_of_a_real_run_hold_every_request_and_no_key_or_password(db, password_roles, tmp_path):
    owner_url, api_url, passwords = password_roles
    key = await make_key(db, [TENANT], "admin", actor="bot-1")
    log_path = tmp_path / "serve.log"
    async with sms_serve(owner_url, log_path, SMS_API_DATABASE_URL=api_url, SMS_LOG_FORMAT="json") as (process, url):
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS) as http:
            made = await http.post(DELTA, json={"n": 1}, headers={**bearer(key), "X-Request-ID": "json-1"})
            assert made.status_code == 200
            assert (await http.get(f"/state/{TENANT}/f", headers={"X-API-Key": key.key})).status_code == 200
            assert (await http.get(f"/state/{TENANT}/f?api_key={key.key}")).status_code == 401  # a misplaced key
            assert (await http.get("/metrics", headers=bearer(key))).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert await exit_status(process) == 0

    log = log_path.read_text()
    entries = [json.loads(line) for line in log.splitlines()]  # every line: JSON
    assert any(entry["message"].startswith("State Memory Service") for entry in entries)
    (write,) = [entry for entry in entries if entry.get("request_id") == "json-1"]
    assert (write["tenant"], write["actor"], write["route"], write["status"]) == (TENANT, "bot-1", DELTA_ROUTE, 200)
    assert write["level"] == "info" and write["duration_ms"] >= 0
    assert sum(entry.get("route") == "/state/{tenant_id}/{fsa_id}" for entry in entries) == 2
    for secret in (key.key, *passwords):
        assert secret not in log
    assert "Traceback" not in log


async def test_a_stop_signal_drains_first_serving_on_while_not_ready(database_url, tmp_path):
    log_path = tmp_path / "serve.log"
    async with sms_serve(database_url, log_path, SMS_DRAIN_SECONDS="600") as (process, url):
        async with httpx.AsyncClient(base_url=url, timeout=WAIT_SECONDS) as http:
            process.send_signal(signal.SIGTERM)
            await until(lambda: _status_is(http, "/health/ready", 503), "readiness turned 503")
            assert (await http.get("/health/live")).status_code == 200
            assert (await http.post(DELTA, json={"during": "the drain"})).status_code == 200
            assert process.returncode is None
        process.send_signal(signal.SIGINT)  # a second signal cuts the drain short
        assert await exit_status(process) == 0
    assert "Traceback" not in log_path.read_text()


async def _status_is(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status


def test_redaction_hides_key_secrets_and_connection_string_passwords():
    key = "sms_k_AbCdEfGhIjKl_" + "x" * 43
    line = (
        f"Bearer {key} postgresql://owner:s3cr%40t@db:5432/sms?sslmode=require "
        "host=db password='pa ss' user=u password=plain&x http://host:8080/path@x"
    )
    redacted = logs.redact(line)
    for secret in ("x" * 43, "s3cr%40t", "pa ss", "plain"):
        assert secret not in redacted
    assert "sms_k_AbCdEfGhIjKl_" in redacted  # the key's id stays: it names the key, it opens nothing
    assert "postgresql://owner:[redacted]@db:5432/sms?sslmode=require" in redacted
    assert redacted.endswith("password=[redacted]&x http://host:8080/path@x")  # a port is no password


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("actor=sms_k_AbCdEfGhIjKl_" + "y" * 43, "y" * 43),
        ("could not connect to redis://:hunter2@cache:6379", "hunter2"),
        ("dsn: host=db PASSWORD = Hunter3 user=u", "Hunter3"),
        ("dsn: host=db Password='Hunter 4'", "Hunter 4"),
    ],
)
def test_redaction_finds_each_secret_in_a_line_that_holds_only_it(line, secret):
    """Each pattern is looked for only in lines holding its fixed start: a line with one kind of
    secret and nothing else still loses it, whatever the case of "password"."""
    assert secret not in logs.redact(line)
    assert logs.redact("GET /state/{tenant_id}/{fsa_id} 200 0.4 ms") == "GET /state/{tenant_id}/{fsa_id} 200 0.4 ms"
