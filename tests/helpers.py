"""Helpers shared by the test modules: deltas applied through SQL as a psql user would, the state's
version and log read back, the change feed heard on a LISTEN connection, problem+json checks, and
query plans (of nested statements too)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from app.demo import local_service
from app.settings import Settings

# The suite runs against a Citus cluster (conftest.py: the database of SMS_TEST_CITUS_URL).
ON_CITUS = bool(os.environ.get("SMS_TEST_CITUS_URL"))

ROOT = Path(__file__).resolve().parents[1]
TEST_HOST = "testserver.local"  # the Host header of Litestar's test client
TENANT = "t"
FSA = "f"
CHANNEL = "sms_changes"
PROBLEM_JSON = "application/problem+json"
NOTIFY_WAIT_SECONDS = 15.0


def service_settings(database_url: str, **changes: Any) -> Settings:
    """The service as most tests run it: no key made, and every client served (the test client is
    no loopback client). tests/test_auth.py and tests/test_browsers.py test who may do what."""
    return Settings(database_url=database_url, insecure_no_auth=True, allowed_hosts=(TEST_HOST,), **changes)


def serving(settings: Settings) -> contextlib.AbstractAsyncContextManager[str]:
    """The service under uvicorn on a real 127.0.0.1 socket (so its clients are loopback ones), in
    this event loop; yields its base URL."""
    return local_service(settings, settings.database_url)


def sms_env(database_url: str | None = None) -> dict[str, str]:
    """This environment for an `sms` subprocess: no SMS_* setting but the database's, if given."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("SMS_")}
    if database_url is not None:
        env["SMS_DATABASE_URL"] = database_url
    return env


def run_sms(*args: str, database_url: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`sms …` as a user runs it, in a subprocess, on `database_url` (as its owner) when given."""
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=sms_env(database_url),
        cwd=ROOT,
        check=False,
    )


async def apply_delta(
    conn: asyncpg.Connection, delta: Any, tenant: str = TENANT, fsa: str = FSA, **named: Any
) -> dict[str, Any]:
    """sms.apply_delta(tenant, fsa, delta, p_<name> => value...); the result as a dict."""
    args: list[Any] = [tenant, fsa, delta if isinstance(delta, str) else json.dumps(delta)]
    casts = {"p_meta": "::jsonb", "p_delta_id": "::uuid", "p_expected_version": "::bigint"}
    extra = ""
    for name, value in named.items():
        args.append(json.dumps(value) if name == "p_meta" else value)
        extra += f", {name} => ${len(args)}{casts.get(name, '')}"
    text = await conn.fetchval(f"SELECT sms.apply_delta($1, $2, $3::jsonb{extra})::text", *args)
    return json.loads(text)


async def document(conn: asyncpg.Connection, tenant: str = TENANT, fsa: str = FSA) -> Any:
    return json.loads(await conn.fetchval("SELECT sms.document($1, $2)::text", tenant, fsa))


async def version(conn: asyncpg.Connection, tenant: str = TENANT, fsa: str = FSA) -> int:
    return await conn.fetchval(
        "SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0)", tenant, fsa
    )


async def log_versions(conn: asyncpg.Connection, tenant: str = TENANT, fsa: str = FSA) -> list[int]:
    rows = await conn.fetch(
        "SELECT version FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2 ORDER BY version", tenant, fsa
    )
    return [row["version"] for row in rows]


async def log_rows(conn: asyncpg.Connection, tenant: str = TENANT, fsa: str = FSA) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        """SELECT version, delta_id::text, actor, lineage_id, trace_id, parent_id, meta::text, ops::text, paths
             FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2 ORDER BY version""",
        tenant,
        fsa,
    )
    return [{**dict(row), "meta": json.loads(row["meta"]), "ops": json.loads(row["ops"])} for row in rows]


async def snapshot(conn: asyncpg.Connection, tenant: str = TENANT, fsa: str = FSA) -> tuple[int, list[int], Any]:
    """(version, log versions, document): equal before and after means nothing was applied."""
    return await version(conn, tenant, fsa), await log_versions(conn, tenant, fsa), await document(conn, tenant, fsa)


class Feed:
    """Notifications heard on dedicated LISTEN connections, as JSON payloads in arrival order."""

    def __init__(self, conns: list[asyncpg.Connection]) -> None:
        self.conns = conns
        self.raw: asyncio.Queue[str] = asyncio.Queue()

    def _heard(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self.raw.put_nowait(payload)

    async def next_payload(self) -> str:
        """The next payload's text; generous wait, so a slow machine never fails a test."""
        return await asyncio.wait_for(self.raw.get(), NOTIFY_WAIT_SECONDS)

    async def next(self) -> dict[str, Any]:
        return json.loads(await self.next_payload())

    async def assert_silent(self) -> None:
        """Nothing arrived: a round trip on each listener delivers anything already sent."""
        for _ in range(2):
            for conn in self.conns:
                await conn.fetchval("SELECT 1")
            await asyncio.sleep(0.1)
        await asyncio.sleep(0)
        assert self.raw.empty(), f"unexpected notification: {self.raw.get_nowait()}"


@contextlib.asynccontextmanager
async def listening(database_url: str) -> AsyncIterator[Feed]:
    """LISTEN sms_changes on a connection of its own (NOTIFY is delivered per database, on commit)
    — on Citus on every worker too: a delegated write notifies on its tenant's node."""
    conns = [await asyncpg.connect(database_url)]
    feed = Feed(conns)
    try:
        if ON_CITUS:
            for host, port in await conns[0].fetch("SELECT nodename, nodeport FROM pg_dist_node WHERE groupid <> 0"):
                conns.append(await asyncpg.connect(database_url, host=host, port=port))
        for conn in conns:
            await conn.add_listener(CHANNEL, feed._heard)
        yield feed
    finally:
        for conn in conns:
            await conn.close()


async def add_up_hits(client: Any) -> int:
    """What the service does every second (app.db.slice_hits), now: in the service's event loop,
    which the test client runs in a thread of its own."""
    return await asyncio.to_thread(client.blocking_portal.call, client.app.state.db.flush_slice_hits)


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    """An RFC 9457 problem with the given status and type; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].split(";")[0] == PROBLEM_JSON
    body = response.json()
    assert body["type"] == "urn:sms:problem:" + slug, body
    assert body["status"] == status
    assert body["success"] is False
    return body


def canonical(value: Any) -> Any:
    """A JSON value in a form where equality is JSON equality: numbers compare by exact decimal
    value, and true is not 1."""
    if value is None or isinstance(value, bool | str):
        return (type(value).__name__, value)
    if isinstance(value, int | float | Decimal):
        return ("number", Decimal(str(value)))
    if isinstance(value, list):
        return ("array", tuple(canonical(v) for v in value))
    assert isinstance(value, dict), value
    return ("object", tuple(sorted((k, canonical(v)) for k, v in value.items())))


def key_family(member: str) -> str | None:
    """What sms.key_family should say: the key folded as lower() folds it under COLLATE "C" (ASCII
    letters only), up to and including its first character that is not a letter or digit."""
    folded = "".join(chr(ord(c) + 32) if "A" <= c <= "Z" else c for c in member)
    found = re.match(r"[a-z0-9]*[^a-z0-9]", folded)
    return found.group(0) if found else None


def expected_counts(doc: dict[str, Any]) -> dict[tuple[str, str], tuple[int, dict[str, int]]]:
    """(collection, family) -> (members, counts by status) of every object-valued top-level key."""
    members: Counter[tuple[str, str]] = Counter()
    statuses: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for collection, value in doc.items():
        if not isinstance(value, dict):
            continue
        for member, entry in value.items():
            status = entry.get("status") if isinstance(entry, dict) else None
            for family in ("", key_family(member)):
                if family is None:
                    continue
                members[collection, family] += 1
                if isinstance(status, str):
                    statuses[collection, family][status] += 1
    return {key: (n, dict(statuses[key])) for key, n in members.items()}


def plan_nodes(node: dict[str, Any]) -> list[dict[str, Any]]:
    """A plan node (EXPLAIN FORMAT JSON) and every node below it."""
    return [node] + [child for sub in node.get("Plans", []) for child in plan_nodes(sub)]


def one_server_plans() -> None:
    """Skips a test of plan shapes on Citus, where the coordinator's plan of a statement is a
    distributed one and its shard's plan the worker's (on the shards, with their own names)."""
    if ON_CITUS:
        pytest.skip("on Citus: the plans are Citus's distributed plans, the shards' are the workers' own")


async def logged_plans(conn: asyncpg.Connection, query: str, *args: Any, analyze: bool = False) -> list[dict[str, Any]]:
    """The plans of every statement `query` runs, nested ones too (auto_explain's LOG messages);
    with `analyze`, with the rows each node actually produced."""
    one_server_plans()
    messages: list[str] = []

    def heard(_conn: Any, message: Any) -> None:
        messages.append(message.message)

    await conn.execute(
        "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
        f" SET auto_explain.log_analyze = {'on' if analyze else 'off'};"
        " SET auto_explain.log_format = json; SET client_min_messages = log"
    )
    conn.add_log_listener(heard)
    try:
        await conn.fetch(query, *args)
        await conn.fetchval("SELECT 1")
        await asyncio.sleep(0)
    finally:
        conn.remove_log_listener(heard)
        await conn.execute("SET client_min_messages = notice; SET auto_explain.log_min_duration = -1")
    return [json.loads(m.split("plan:", 1)[1]) for m in messages if "plan:" in m]
