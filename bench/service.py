"""The service as benchmarks run it: in a process of its own, served by uvicorn or granian, and a
raw HTTP/1.1 client to load it.

Why a raw client: this machine has 2 cores, shared by the load generator, the service and
PostgreSQL, and httpx spends 0.3–0.5 ms of CPU per request: at thousands of requests per second it
would take most of a core from what is measured, and measure itself. `HttpConnection` writes request
bytes built without an HTTP library on one keep-alive connection and reads back the status line, the
headers and Content-Length bytes of body: some tens of µs per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import psutil

from bench.common import ROOT

STARTUP_SECONDS = 60.0  # the most a service may take to answer /health, or subscribers to subscribe
STOP_SECONDS = 10.0  # after SIGTERM, before SIGKILL


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)


def http_request(method: str, path: str, body: bytes | None = None) -> bytes:
    """The bytes of a request to the service on 127.0.0.1 (a Host its check lets through)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + (body or b"")


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, port: int) -> HttpConnection:
        # asyncio sets TCP_NODELAY on the sockets it opens itself
        return cls(*await asyncio.open_connection("127.0.0.1", port))

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Sends the request, returns the answer's status and body. No drain: one small request at a
        time never reaches the transport's buffer limit."""
        self._writer.write(request)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length, which this client does not read: {head[:200]!r}")
        return int(head[9:12]), await self._reader.readexactly(int(length[1]))

    def close(self) -> None:
        self._writer.close()


@dataclass(frozen=True)
class Server:
    """A way to serve app.asgi: its label and its command, less the address to listen on."""

    label: str
    argv: tuple[str, ...]


def uvicorn(workers: int, loop: str | None = None) -> Server:
    """uvicorn with `workers` processes; `loop` "asyncio" (with h11: pure Python) or "uvloop" (with
    httptools); None: uvicorn's default, which picks those two when they are installed."""
    argv = [sys.executable, "-m", "uvicorn", "--factory", "app.asgi:create", "--log-level", "warning"]
    argv += ["--workers", str(workers)] if workers > 1 else []
    label = f"uvicorn, {workers} worker{'s' if workers > 1 else ''}"
    if loop is None:
        return Server(label, tuple(argv))
    parser = "h11" if loop == "asyncio" else "httptools"
    return Server(f"{label}, {loop} + {parser}", (*argv, "--loop", loop, "--http", parser))


def granian(workers: int) -> Server:
    loop = "uvloop" if installed("uvloop") else "asyncio"
    argv = [sys.executable, "-m", "granian", "--interface", "asgi", "--factory", "--log-level", "warning"]
    argv += ["--workers", str(workers), "--loop", loop, "app.asgi:create"]
    return Server(f"granian, {workers} worker{'s' if workers > 1 else ''}, {loop}", tuple(argv))


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@dataclass(frozen=True)
class Service:
    """A running server of the app: its port and the process that leads its group."""

    port: int
    pid: int

    def cpu_seconds(self) -> float:
        """The CPU time its processes (the workers too) have used so far."""
        leader = psutil.Process(self.pid)
        total = 0.0
        for process in (leader, *leader.children(recursive=True)):
            with contextlib.suppress(psutil.NoSuchProcess):
                total += sum(process.cpu_times()[:2])  # user + system
        return total


@contextlib.asynccontextmanager
async def service_process(server: Server, database_url: str, **settings: str) -> AsyncIterator[Service]:
    """The app served by `server` on a free 127.0.0.1 port with SMS_DATABASE_URL and these settings
    (group_commit="false" is SMS_GROUP_COMMIT=false), once /health answers 200. No API key exists in
    a scratch database: the service serves loopback clients without one and limits no rate."""
    port = _free_port()
    env = {name: value for name, value in os.environ.items() if name != "SMS_API_DATABASE_URL"}  # another database's
    env |= {"SMS_DATABASE_URL": database_url} | {f"SMS_{name.upper()}": value for name, value in settings.items()}
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            *server.argv,
            *("--host", "127.0.0.1", "--port", str(port)),
            cwd=ROOT,
            env=env,
            stdout=output,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # a group of its own: its workers are stopped with it
        )
        try:
            await _until_healthy(server, process, port, output)
            yield Service(port, process.pid)
        finally:
            await _stop(process)


@contextlib.asynccontextmanager
async def served(server: Server, database_url: str, **settings: str) -> AsyncIterator[int]:
    """service_process(…), for callers that need its port only."""
    async with service_process(server, database_url, **settings) as service:
        yield service.port


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def _until_healthy(server: Server, process: asyncio.subprocess.Process, port: int, output: Any) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.returncode is not None:
            output.seek(0)
            raise RuntimeError(f"{server.label} exited ({process.returncode}):\n{output.read()[-3000:].decode()}")
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            connection = await HttpConnection.open(port)
            try:
                if (await connection.exchange(http_request("GET", "/health")))[0] == 200:
                    return
            finally:
                connection.close()
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{server.label} did not answer /health within {STARTUP_SECONDS:.0f} s")


async def _stop(process: asyncio.subprocess.Process) -> None:
    """SIGTERM to the server's process group, SIGKILL if it is still there STOP_SECONDS later."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        async with asyncio.timeout(STOP_SECONDS):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()
