"""The wheel is the service: built from this checkout and installed into a fresh venv, its `sms
migrate` brings an empty database to the head revision and its `sms serve` answers /health, run
from outside the repository so that nothing is imported from the checkout (issue 10: a
non-editable install looked for migrations/ beside site-packages)."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from alembic.script import ScriptDirectory
from helpers import ROOT, sms_env

from app.db import migrate
from app.db.sqlfiles import current_sql

START_SECONDS = 60
STOP_SECONDS = 30
PIP_SECONDS = 600
# What pip says when no index it may use has a distribution: then the wheel cannot be built or
# installed here (offline), which is no fault of the package.
NO_INDEX = "No matching distribution found"

# The wheel is the same whatever server the suite runs against: CI builds and installs it once, in
# the pass on the embedded PostgreSQL (tests/test_migrations.py migrates the other server).
pytestmark = pytest.mark.skipif(
    bool(os.environ.get("SMS_TEST_DATABASE_URL")),
    reason="built and installed once per CI run, in the pass on the embedded PostgreSQL",
)


def pip(what: str, *args: str) -> None:
    """pip, as the test's own interpreter has it; skips the test when no index is reachable."""
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=PIP_SECONDS,
        check=False,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0 and NO_INDEX in output:
        reason = next(line.strip() for line in output.splitlines() if NO_INDEX in line)
        pytest.skip(f"no package index is reachable to {what}: {reason}")
    assert done.returncode == 0, output


def build_wheel(what: str, project: Path, out: Path) -> Path:
    """The wheel of a project of this checkout's working tree. Built from a copy: setuptools
    writes build/ into the tree it builds, and stale files left there would end up in later wheels."""
    source = out / "source" / project.name
    shutil.copytree(project, source, ignore=shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__"))
    pip(f"build the {what} wheel", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(source))
    (built,) = out.glob(f"{what.replace('-', '_')}-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel(client_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The service's wheel (which needs the client's: the service depends on it)."""
    return build_wheel("state-memory-service", ROOT, tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel("state-memory-client", ROOT / "client", tmp_path_factory.mktemp("client-wheel"))


@pytest.fixture(scope="module")
def installed(wheel: Path, client_wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with both wheels and their dependencies from the index (pip's cache makes a
    rerun quick); its bin/ directory. The venv gets no pip of its own: this pip installs into it.
    Removed afterwards: it weighs some 190 MB."""
    venv = tmp_path_factory.mktemp("venv")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
        python = str(venv / "bin" / "python")
        pip("install the wheels", "--python", python, "install", "--quiet", str(client_wheel), str(wheel))
        yield venv / "bin"
    finally:
        shutil.rmtree(venv, ignore_errors=True)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory that is not the repository."""
    assert not tmp_path.resolve().is_relative_to(ROOT)
    return tmp_path


def installed_env(database_url: str | None = None) -> dict[str, str]:
    """The environment of an installed `sms`: nothing points back at the checkout."""
    return {name: value for name, value in sms_env(database_url).items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}


def run(command: list[str], cwd: Path, database_url: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=installed_env(database_url), capture_output=True, text=True, timeout=180, check=False
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def shipped(directory: str, pattern: str, into: str) -> set[str]:
    """Where the wheel must hold the checkout's directory/**/pattern files."""
    return {f"{into}/{path.relative_to(ROOT / directory)}" for path in (ROOT / directory).rglob(pattern)}


def repository_head() -> str:
    return ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused")).get_current_head()


def test_the_wheel_carries_every_module_the_migrations_and_the_sql(wheel: Path):
    parts = [
        shipped("app", "*.py", "app"),
        shipped("migrations", "*.py", "app/_migrations"),
        shipped("migrations/versions", "*.sql", "app/_migrations/versions"),
        shipped("sql", "*.sql", "app/_sql"),
        {"app/_migrations/script.py.mako"},
        *(shipped("app/ui", pattern, "app/ui") for pattern in ("*.html", "*.css", "*.js")),
    ]
    assert all(parts), parts
    missing = sorted(set().union(*parts) - set(zipfile.ZipFile(wheel).namelist()))
    assert not missing, f"the wheel lacks {missing} (is a package missing from [tool.setuptools] packages?)"


def test_the_installed_package_reads_its_own_migrations_and_sql(installed: Path, outside: Path):
    """Everything comes from the venv, and the SQL it carries is this checkout's."""
    probe = (
        "import hashlib, app; from importlib.resources import files; from app.db.sqlfiles import current_sql\n"
        "print(app.__file__, files('app._migrations'), files('app._sql'), sep='\\n')\n"
        "print(hashlib.sha256(current_sql().encode()).hexdigest())"
    )
    done = run([str(installed / "python"), "-c", probe], cwd=outside)
    assert done.returncode == 0, done.stderr
    *locations, digest = done.stdout.split()
    venv = installed.parent.resolve()
    for location in locations:
        assert Path(location).resolve().is_relative_to(venv), f"{location} is not in the fresh venv {venv}"
    assert digest == hashlib.sha256(current_sql().encode()).hexdigest()


def test_the_installed_sms_migrates_and_serves(installed: Path, outside: Path, empty_database_url: str):
    migrated = run([str(installed / "sms"), "migrate"], cwd=outside, database_url=empty_database_url)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated to head" in migrated.stdout
    with psycopg.connect(empty_database_url) as conn:
        versions = [row[0] for row in conn.execute("SELECT version_num FROM public.alembic_version")]
    assert versions == [repository_head()]

    port = free_port()
    with (outside / "serve.log").open("w+") as log:
        process = subprocess.Popen(
            [str(installed / "sms"), "serve", "--no-migrate", "--port", str(port)],
            cwd=outside,
            env=installed_env(empty_database_url),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + START_SECONDS
            with httpx.Client(timeout=5) as http:
                while True:
                    assert process.poll() is None, f"sms serve exited:\n{(outside / 'serve.log').read_text()}"
                    assert time.monotonic() < deadline, f"no answer on /health:\n{(outside / 'serve.log').read_text()}"
                    try:
                        response = http.get(f"http://127.0.0.1:{port}/health")
                        break
                    except httpx.TransportError:
                        time.sleep(0.1)
            assert response.status_code == 200, response.text
            assert response.json()["status"] == "ok"
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=STOP_SECONDS)  # raises if it is still running
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
