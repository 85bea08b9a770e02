"""The `sms` command line, run as a user would (a subprocess against the test database)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from helpers import run_sms

from app import __version__


def test_version_and_help():
    assert run_sms("--version").stdout.strip() == f"sms {__version__}"
    help_text = run_sms("--help").stdout
    for command in ("serve", "migrate", "listen", "demo"):
        assert command in help_text


async def test_listen_prints_the_log_then_live_changes_as_json_lines(database_url, conn):
    for n in range(3):
        await conn.execute("SELECT sms.apply_delta('acme', 'launch', $1::jsonb)", json.dumps({"n": n}))
    await conn.execute("SELECT sms.apply_delta('acme', 'other', '{\"x\": 1}')")
    env = {**os.environ, "SMS_DATABASE_URL": database_url}
    listener = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "listen",
        "acme/launch",
        "--since",
        "1",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        seen = [json.loads(await asyncio.wait_for(listener.stdout.readline(), 30)) for _ in range(2)]
        await conn.execute("SELECT sms.apply_delta('acme', 'launch', '{\"n\": 9}')")
        seen.append(json.loads(await asyncio.wait_for(listener.stdout.readline(), 30)))
    finally:
        listener.terminate()
        await listener.wait()
    assert [(c["fsa_id"], c["version"]) for c in seen] == [("launch", 2), ("launch", 3), ("launch", 4)]
    assert seen[-1]["ops"] == [{"op": "set", "path": ["n"], "value": 9}]


def test_an_unreachable_database_is_one_clear_line_without_the_password():
    result = run_sms("migrate", database_url="postgresql://postgres:s3cret@127.0.0.1:1/nowhere")
    assert result.returncode != 0
    assert "sms: the database is unavailable" in result.stderr
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr + result.stdout
