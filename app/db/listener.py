"""The process's one LISTEN connection on channel sms_changes.

It owns a dedicated connection (never a pooled one: a pool resets sessions and drops LISTEN; nor
one through a pooler in transaction mode, which hands the session to other clients after each
transaction: behind one, the service's SMS_LISTEN_DATABASE_URL leads to the primary itself; and
never a replica's: NOTIFY is the primary's alone), proves it is alive by a NOTIFY round trip on a
private probe channel, and on any failure reconnects with capped exponential backoff and then
wakes every subscriber, because it may have missed notifications meanwhile. Notifications are
only hints: subscribers read the log (sms.feed_after).

On Citus a write runs on the node of its tenant (its function call is delegated there), and its
NOTIFY is that node's: the listener then also listens on every worker the coordinator lists
(pg_dist_node), reached at the host and port the coordinator knows it by, with the same user,
password and database, and treats them as one: any connection lost means all are renewed.

Each subscriber has a wake-up flag, a
bounded queue of one coalesced hint, so a subscriber that falls behind simply reads more of the
log when it next looks, and never blocks the listener, the other subscribers or the writers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from dataclasses import dataclass, field

import asyncpg

from app import metrics

log = logging.getLogger(__name__)

CHANNEL = "sms_changes"


@dataclass(eq=False)
class Wakeup:
    """A subscriber's interest (a tenant, optionally one state) and its wake-up flag."""

    tenant_id: str
    fsa_id: str | None = None
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wants(self, tenant_id: str | None, fsa_id: str | None) -> bool:
        return tenant_id == self.tenant_id and (self.fsa_id is None or fsa_id == self.fsa_id)


class Listener:
    """LISTEN sms_changes on a dedicated connection and wake the subscribers it concerns."""

    def __init__(
        self,
        dsn: str,
        *,
        probe_interval: float = 5.0,
        probe_timeout: float = 5.0,
        max_backoff: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self.max_backoff = max_backoff
        self.probe_channel = f"sms_probe_{os.getpid()}_{id(self):x}"
        self.connected = asyncio.Event()
        self.reconnects = 0
        self._wakeups: set[Wakeup] = set()
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self._probe_echo: asyncio.Event = asyncio.Event()
        self._conn: asyncpg.Connection | None = None  # the one to the database named by dsn
        self._nodes: list[asyncpg.Connection] = []  # and, on Citus, one to each worker

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sms-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    def register(self, tenant_id: str, fsa_id: str | None = None) -> Wakeup:
        wakeup = Wakeup(tenant_id, fsa_id)
        self._wakeups.add(wakeup)
        return wakeup

    def unregister(self, wakeup: Wakeup) -> None:
        self._wakeups.discard(wakeup)

    @property
    def backend_pid(self) -> int | None:
        """The server process of the LISTEN connection (for operators and tests)."""
        return self._conn.get_server_pid() if self._conn is not None and not self._conn.is_closed() else None

    async def _run(self) -> None:
        attempt = 0
        while True:
            try:
                await self._connect()
                attempt = 0
                self._wake_all()  # whatever happened while we were away is in the log
                await self._watch()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure means: reconnect
                log.warning("change-feed listener lost its connection: %s", type(exc).__name__)
            self.connected.clear()
            await self._close()
            attempt += 1
            self.reconnects += 1
            metrics.LISTENER_RECONNECTS.inc()
            delay = min(self.max_backoff, 0.1 * 2**attempt) * (0.5 + random.random() / 2)
            await asyncio.sleep(delay)

    async def _connect(self) -> None:
        self._lost.clear()
        self._conn = await self._listen()
        for host, port in await _workers(self._conn):
            self._nodes.append(await self._listen(host=host, port=port))
        self.connected.set()

    async def _listen(self, **node: object) -> asyncpg.Connection:
        conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "sms-listener"}, **node)
        try:
            conn.add_termination_listener(lambda _: self._lost.set())
            await conn.add_listener(CHANNEL, self._on_notify)
            await conn.add_listener(self.probe_channel, lambda *_: self._probe_echo.set())
        except BaseException:
            conn.terminate()
            raise
        return conn

    async def _watch(self) -> None:
        """Probe until the connection is lost or a probe goes unanswered."""
        assert self._conn is not None
        while True:
            lost = asyncio.create_task(self._lost.wait())
            try:
                done, _ = await asyncio.wait({lost}, timeout=self.probe_interval)
            finally:
                lost.cancel()
            if done:
                raise ConnectionError("the LISTEN connection was terminated")
            for conn in (self._conn, *self._nodes):
                self._probe_echo.clear()
                await asyncio.wait_for(
                    conn.execute("SELECT pg_notify($1, 'probe')", self.probe_channel), self.probe_timeout
                )
                await asyncio.wait_for(self._probe_echo.wait(), self.probe_timeout)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = json.loads(payload)
            tenant_id, fsa_id = change.get("tenant_id"), change.get("fsa_id")
        except (ValueError, AttributeError):
            return  # not ours: anyone may NOTIFY this channel
        for wakeup in self._wakeups:
            if wakeup.wants(tenant_id, fsa_id):
                wakeup.event.set()

    def _wake_all(self) -> None:
        for wakeup in self._wakeups:
            wakeup.event.set()

    async def _close(self) -> None:
        conns = [self._conn, *self._nodes]
        self._conn, self._nodes = None, []
        for conn in conns:
            if conn is not None and not conn.is_closed():
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
                if not conn.is_closed():
                    conn.terminate()


async def _workers(conn: asyncpg.Connection) -> list[tuple[str, int]]:
    """The active workers of a Citus coordinator, where delegated writes send their NOTIFY (group 0
    is the coordinator itself; a plain server has no pg_dist_node)."""
    if not await conn.fetchval("SELECT to_regclass('pg_catalog.pg_dist_node') IS NOT NULL"):
        return []
    rows = await conn.fetch(
        "SELECT nodename, nodeport FROM pg_dist_node WHERE isactive AND noderole = 'primary' AND groupid <> 0"
    )
    return [(row["nodename"], row["nodeport"]) for row in rows]
