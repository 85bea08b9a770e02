"""The change feed for subscribers that never miss a version.

`Feed.subscribe(tenant, fsa=None, since=…)` yields every delta of a state (or of every state of a
tenant) exactly once and in order: NOTIFY only wakes it, the delta log is what it reads, and a
periodic poll covers notifications that never came. Use it on the database directly:

    async with Feed.connect(dsn) as feed:
        async for change in feed.subscribe("acme", "launch", since=0):
            ...

The HTTP service uses the same class behind its SSE endpoints, and closes it when it shuts down:
every subscription then ends, and each SSE stream with a last event saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from app.db.listener import Listener, Wakeup
from app.db.queries import Database
from app.errors import Problem

HELD_BACK_RETRY = 0.02  # seconds before a tenant feed looks again for deltas still held back


@dataclass(frozen=True)
class Change:
    """One applied delta: its state, version, metadata and normalised ops."""

    tenant_id: str
    fsa_id: str
    version: int
    delta_id: str
    actor: str | None
    lineage_id: str | None
    trace_id: str | None
    parent_id: str | None
    meta: dict[str, Any]
    ops: list[dict[str, Any]]
    paths: list[str]
    collections: list[str]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data


@dataclass(frozen=True)
class Position:
    """Where a subscriber is: after (tx_id, fsa_id, version) of a tenant's log."""

    tx_id: str = "0"
    fsa_id: str = ""
    version: int = 0


class Feed:
    """Subscriptions over one database pool and one listener."""

    def __init__(
        self,
        db: Database,
        listener: Listener,
        *,
        poll_interval: float = 5.0,
        batch: int = 500,
        max_retry_delay: float = 5.0,
    ) -> None:
        self.db = db
        self.listener = listener
        self.poll_interval = poll_interval
        self.batch = batch
        self.max_retry_delay = max_retry_delay
        self.closed = False
        self._subscriptions: set[Wakeup] = set()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, dsn: str, **options: Any) -> AsyncIterator[Feed]:
        """A feed with its own small pool and listener, for use outside the HTTP service."""
        db = await Database.connect(dsn, min_size=1, max_size=4)
        listener = Listener(dsn)
        await listener.start()
        try:
            yield cls(db, listener, **options)
        finally:
            await listener.stop()
            await db.close()

    def close(self) -> None:
        """End every subscription, those to come too: each returns once the change it is yielding
        has been taken (a graceful shutdown; subscribers resume from their last position)."""
        self.closed = True
        for wakeup in self._subscriptions:
            wakeup.event.set()

    async def subscribe(
        self,
        tenant_id: str,
        fsa_id: str | None = None,
        *,
        since: int | str | None = None,
        slice_spec: str | None = None,
        idle_timeout: float | None = None,
        db: Database | None = None,
    ) -> AsyncIterator[Change | None]:
        """Changes after `since` — a version for one state, or an event id ("fsa:version") for a
        tenant — oldest first, then live. With `slice_spec`, only changes that touch the slice.
        With `idle_timeout`, yields None after that many idle seconds (for keep-alives). `db`
        reads the log (the HTTP service's acts for the request's key); the feed's own by default.
        Ends when the feed is closed."""
        db = db or self.db
        position = await self.position(tenant_id, fsa_id, since, db)
        wakeup = self.listener.register(tenant_id, fsa_id)
        self._subscriptions.add(wakeup)
        clock = asyncio.get_running_loop().time
        last_sent = clock()
        retry = 0.0  # > 0 while a notified delta is not readable yet, or the database is away
        try:
            while not self.closed:
                wakeup.event.clear()
                try:
                    rows = await db.read_feed(
                        tenant_id, fsa_id, position.tx_id, position.fsa_id, position.version, slice_spec, self.batch
                    )
                except Problem as problem:
                    if problem.status != 503:
                        raise
                    rows = None  # the database is restarting or unreachable: the position is safe
                for row, wanted, tx_id in rows or ():
                    position = Position(tx_id, row.fsa_id, row.version)
                    if wanted:
                        last_sent = clock()
                        yield row
                if rows is not None and len(rows) == self.batch:
                    continue
                wait = self.poll_interval if retry == 0 else retry
                if idle_timeout is not None:
                    wait = max(0.0, min(wait, last_sent + idle_timeout - clock()))
                notified = await _wait(wakeup.event, wait)
                if self.closed:
                    return
                if idle_timeout is not None and clock() - last_sent >= idle_timeout:
                    last_sent = clock()
                    yield None
                retry = self._next_retry(retry, rows, notified, one_state=fsa_id is not None)
        finally:
            self._subscriptions.discard(wakeup)
            self.listener.unregister(wakeup)

    def _next_retry(self, retry: float, rows: list | None, notified: bool, *, one_state: bool) -> float:
        """How soon to read the log again (0: at the next notification or poll).

        A tenant feed reads only below the oldest running transaction, so a committed delta can be
        unreadable for a while: after the feed moved, or was notified of something it could not
        read yet, it looks again after 20 ms, then backs off towards the poll interval. One
        state's versions commit in order, so its feed never waits for anything. While the
        database is away, reads back off up to max_retry_delay."""
        if rows is None:
            return min(self.max_retry_delay, max(0.1, retry * 2))
        if one_state:
            return 0.0
        if rows or (notified and not retry):
            return HELD_BACK_RETRY
        if retry:
            return retry * 2 if retry * 2 < self.poll_interval else 0.0
        return 0.0

    async def position(
        self, tenant_id: str, fsa_id: str | None, since: int | str | None, db: Database | None = None
    ) -> Position:
        """The position after `since`; a Problem (400) when it names no delta."""
        db = db or self.db
        if since is None or since == 0 or since == "0" or since == "":
            return Position()
        if fsa_id is not None:
            version = since if isinstance(since, int) else _version(str(since).rsplit(":", 1)[-1])
            current = await db.current_version(tenant_id, fsa_id)
            if version > current:
                raise Problem(
                    400,
                    "invalid-event-id",
                    "Unknown event id",
                    f"version {version} is beyond the state's current version {current}",
                    current_version=current,
                )
            return Position(version=version)
        state, _, version = str(since).rpartition(":")
        tx_id = await db.delta_tx_id(tenant_id, state, _version(version)) if state else None
        if tx_id is None:
            raise Problem(
                400,
                "invalid-event-id",
                "Unknown event id",
                f"event id {str(since)[:80]!r} names no delta of this tenant (expected fsa:version)",
            )
        return Position(tx_id, state, _version(version))


def _version(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise Problem(400, "invalid-event-id", "Invalid event id", f"{text[:40]!r} is not a version")
    return int(text)


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Whether the event was set within `seconds`."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
