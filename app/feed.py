"""The change feed for subscribers that never miss a version.

`Feed.subscribe(tenant, fsa=None, since=…)` yields every delta of a state (or of every state of a
tenant) exactly once and in order: NOTIFY only wakes it, the delta log is what it reads, and a
periodic poll covers notifications that never came. Use it on the database directly:

    async with Feed.connect(dsn) as feed:
        async for change in feed.subscribe("acme", "launch", since=0):
            ...

Fan-out is in memory (DESIGN §11): in a process, one reader per state (and per tenant) reads each
new page of the log once and hands it to every local subscriber of it, so N subscribers cost one
query per page, not N. A subscriber reads the log itself only to catch up: from where it starts,
and whenever it finds a gap before the reader's next page (it joined behind the reader, or fell
more than MAX_QUEUED_PAGES pages behind and was dropped from the queue). Positions in the log
decide what each one takes from a page, so every version arrives once and in order however the
two reads meet.

The HTTP service uses the same class behind its SSE endpoints, and closes it when it shuts down:
every subscription then ends, and each SSE stream with a last event saying so. A subscription to
one state also ends, raising StatePurged, when the state is purged (DESIGN §14): its reader, finding
nothing new when woken, sees the state's version fall below what it had read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app import metrics
from app.db.listener import Listener
from app.db.queries import Database
from app.domain.change import Change, Position
from app.errors import Problem

log = logging.getLogger(__name__)

HELD_BACK_RETRY = 0.02  # seconds before a feed reading replicas looks again for what they have not replayed
MAX_QUEUED_PAGES = 256  # pages a subscriber may fall behind its reader before it reads the log itself
GATHER_PER_SUBSCRIBER = 0.0002  # seconds a reader lets changes gather after a page, per subscriber...
MAX_GATHER = 0.1  # ... and at most (500 subscribers: 10 pages a second each, whatever the write rate)
WAKE_AT_ONCE = 25  # subscribers a reader wakes in one turn of the event loop

Row = tuple[Change, Position, list[bool]]  # a change, its position, whether it touches each slice spec

__all__ = ["Change", "Changes", "Feed", "Position", "StatePurged"]


class Changes(list[Change]):
    """A page of changes as a subscription yields it. The subscribers that take a whole page of
    their reader get the same object, so that what a sender makes of it (an SSE write's bytes) is
    made once per page, not once per subscriber: `made` keeps it."""

    def __init__(self, changes: Iterable[Change] = ()) -> None:
        super().__init__(changes)
        self.made: dict[str, Any] = {}


@dataclass(eq=False)
class _Page:
    """What a reader read in one query: every change after `after`, up to its last row."""

    after: Position
    rows: list[Row]
    slice_specs: tuple[str, ...]  # the specs each row's flags answer, in order
    _whole: dict[int | None, Changes] = field(default_factory=dict)

    def whole(self, flag: int | None) -> Changes:
        """Its changes (those touching slice spec number `flag`): one object for all who take them."""
        changes = self._whole.get(flag)
        if changes is None:
            changes = self._whole[flag] = Changes(c for c, _, wanted in self.rows if flag is None or wanted[flag])
        return changes


@dataclass(eq=False)
class _Subscriber:
    """A subscription's mailbox: the pages its reader handed it, and a flag to wake it."""

    slice_spec: str | None
    pages: deque[_Page] = field(default_factory=deque)
    event: asyncio.Event = field(default_factory=asyncio.Event)
    behind: bool = False  # a page it needs is not in its mailbox: it reads the log itself
    purged: bool = False  # its state was purged: the subscription ends (StatePurged)

    def deliver(self, page: _Page) -> None:
        if len(self.pages) >= MAX_QUEUED_PAGES or (
            self.slice_spec is not None and self.slice_spec not in page.slice_specs
        ):
            self.pages.clear()
            self.behind = True
        else:
            self.pages.append(page)
        self.event.set()


class _Reader:
    """One state's (or tenant's) log, read once per page for every subscriber of this process."""

    def __init__(self, feed: Feed, tenant_id: str, fsa_id: str | None, position: Position) -> None:
        self.feed = feed
        self.tenant_id = tenant_id
        self.fsa_id = fsa_id
        self.position = position
        self.subscribers: set[_Subscriber] = set()
        self.task = asyncio.create_task(self._run(), name=f"sms-feed-reader {tenant_id}/{fsa_id or '*'}")

    async def _run(self) -> None:
        feed = self.feed
        db = feed.db.acting_for([self.tenant_id])  # its subscribers were let in for this tenant
        wakeup = feed.listener.register(self.tenant_id, self.fsa_id)
        retry = 0.0
        try:
            while True:
                wakeup.event.clear()
                try:
                    rows = await self._read(db)
                except Exception:  # never leave the subscribers waiting on a reader that died
                    log.exception("the change-feed reader of %s failed; it reads again", self.tenant_id)
                    rows = None
                if rows is not None and len(rows) == feed.batch:
                    continue
                if rows:
                    await asyncio.sleep(self.pause)
                notified = await _wait(wakeup.event, feed.poll_interval if retry == 0 else retry)
                # a replica may not have replayed yet what a notification announced
                retry = feed._next_retry(retry, rows, notified, replicas=bool(db.replicas))
        finally:
            feed.listener.unregister(wakeup)

    @property
    def pause(self) -> float:
        """How long to let changes gather after a page: each page costs every subscriber a write
        to its stream, so the more subscribers, the fewer and bigger the pages (a delay of at most
        MAX_GATHER each change waits, far below what a reader of a feed notices)."""
        return min(MAX_GATHER, GATHER_PER_SUBSCRIBER * len(self.subscribers))

    async def _read(self, db: Database) -> list[Row] | None:
        """The next page, handed to every subscriber; None while the database is away."""
        slice_specs = tuple(sorted({s.slice_spec for s in self.subscribers if s.slice_spec is not None}))
        try:
            rows = await db.read_feed(self.tenant_id, self.fsa_id, self.position, slice_specs, self.feed.batch)
        except Problem as problem:
            if problem.status == 503:
                return None
            if not slice_specs:
                log.warning("the change-feed reader cannot read the log: %s", problem.detail)
                return None
            # a filter that no longer parses (its alias went away): the filtered subscribers read
            # the log themselves and meet the problem there
            slice_specs = ()
            rows = await db.read_feed(self.tenant_id, self.fsa_id, self.position, (), self.feed.batch)
        if rows:
            now = datetime.now(UTC)
            for change, _, _ in rows:
                metrics.FEED_LAG.observe(max(0.0, (now - change.created_at).total_seconds()))
            page = _Page(self.position, rows, slice_specs)
            self.position = rows[-1][1]
            for n, subscriber in enumerate(list(self.subscribers), 1):
                subscriber.deliver(page)
                if n % WAKE_AT_ONCE == 0:
                    # the next ones after the event loop has looked at its sockets: the writers'
                    # requests are served between them, not after 500 streams' writes
                    await asyncio.sleep(0)
        elif rows == [] and self.fsa_id is not None and self.position.version > 0:
            await self._check_purged(db)
        return rows

    async def _check_purged(self, db: Database) -> None:
        """Whether the state was purged, when a wake-up found nothing new (the purge's notice, or
        a poll, had it been missed): the truth is the state's version, now below what was read.
        Its subscribers end; a state written again starts from version 0."""
        try:
            current = await db.current_version(self.tenant_id, self.fsa_id)
        except Problem:
            return  # the database is away: the next wake-up or poll looks again
        if current < self.position.version:
            self.position = Position(version=current)
            for subscriber in self.subscribers:
                subscriber.purged = True
                subscriber.event.set()


class StatePurged(Exception):
    """The state a subscription follows was purged (sms.purge_state, or its TTL ran out): what it
    delivered is gone, and the subscription has ended."""

    def __init__(self, tenant_id: str, fsa_id: str) -> None:
        super().__init__(f"{tenant_id}/{fsa_id} was purged")
        self.tenant_id = tenant_id
        self.fsa_id = fsa_id


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
        self._subscribers: set[_Subscriber] = set()
        self._readers: dict[tuple[str, str | None], _Reader] = {}

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

    @property
    def readers(self) -> int:
        """Readers running: one per state or tenant followed in this process (for tests and metrics)."""
        return len(self._readers)

    @property
    def subscribers(self) -> int:
        """Subscriptions open in this process (for metrics)."""
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription, those to come too: each returns once the change it is yielding
        has been taken (a graceful shutdown; subscribers resume from their last position)."""
        self.closed = True
        for subscriber in self._subscribers:
            subscriber.event.set()

    async def subscribe(
        self, tenant_id: str, fsa_id: str | None = None, **options: Any
    ) -> AsyncIterator[Change | None]:
        """Changes after `since` — a version for one state, or an event id ("fsa:version") for a
        tenant — oldest first, then live. With `slice_spec`, only changes that touch the slice.
        With `idle_timeout`, yields None after that many idle seconds (for keep-alives). `db`
        reads the log while catching up (the HTTP service's acts for the request's key); the
        feed's own by default. Ends when the feed is closed. (The options of `subscribe_pages`.)"""
        pages = self.subscribe_pages(tenant_id, fsa_id, **options)
        try:
            async for page in pages:
                if page is None:
                    yield None
                    continue
                for change in page:
                    yield change
        finally:
            await pages.aclose()

    async def subscribe_pages(
        self,
        tenant_id: str,
        fsa_id: str | None = None,
        *,
        since: int | str | None = None,
        slice_spec: str | None = None,
        idle_timeout: float | None = None,
        db: Database | None = None,
    ) -> AsyncIterator[Changes | None]:
        """`subscribe`, a page of changes at a time: what one read of the log found (for a sender
        that writes them at once, as the SSE endpoints do)."""
        db = db or self.db
        one_state = fsa_id is not None
        position = await self.position(tenant_id, fsa_id, since, db)
        me = _Subscriber(slice_spec)
        self._subscribers.add(me)
        reader: _Reader | None = None
        loop = asyncio.get_running_loop()
        clock = loop.time
        last_sent = clock()
        retry = 0.0  # > 0 while the database is away
        alarm: asyncio.TimerHandle | None = None

        def ring() -> None:
            """The keep-alive alarm: one timer per idle period, not one per wait (a wait per page
            and subscriber, 5,000 a second at 500 subscribers). Wakes the subscriber, which sends a
            keep-alive if nothing was sent since, else sets the alarm again from its last send."""
            nonlocal alarm
            alarm = None
            me.event.set()

        try:
            while not self.closed:
                if me.purged:
                    raise StatePurged(tenant_id, fsa_id or "")
                if reader is None or me.behind:
                    me.behind = False
                    try:
                        rows = await db.read_feed(
                            tenant_id, fsa_id, position, () if slice_spec is None else (slice_spec,), self.batch
                        )
                    except Problem as problem:
                        if problem.status != 503:
                            raise
                        # the database is restarting or unreachable: the position is safe
                        retry = min(self.max_retry_delay, max(0.1, retry * 2))
                        me.behind = True
                        await _wait(me.event, retry)
                        me.event.clear()
                        continue
                    retry = 0.0
                    if rows:
                        position = rows[-1][1]
                        changes = Changes(change for change, _, wanted in rows if slice_spec is None or wanted[0])
                        if changes:
                            last_sent = clock()
                            yield changes
                    if len(rows) == self.batch:
                        me.behind = True
                        continue
                    if reader is None:
                        reader = self._join(tenant_id, fsa_id, position, me)
                    continue
                if not me.pages:
                    me.event.clear()
                    if idle_timeout is not None and alarm is None:
                        alarm = loop.call_at(last_sent + idle_timeout, ring)
                    await me.event.wait()
                    if not me.pages and not me.behind and not self.closed and idle_timeout is not None:
                        if clock() - last_sent >= idle_timeout:
                            last_sent = clock()
                            yield None
                    continue
                page = me.pages.popleft()
                if position.before(page.after, one_state=one_state):
                    me.behind = True  # changes between where it is and this page: read them itself
                    continue
                flag = None if slice_spec is None else page.slice_specs.index(slice_spec)
                if not page.after.before(position, one_state=one_state):  # where the page starts
                    changes = page.whole(flag)
                    position = page.rows[-1][1]
                else:
                    changes = Changes()
                    for change, at, wanted in page.rows:
                        if position.before(at, one_state=one_state):
                            position = at
                            if flag is None or wanted[flag]:
                                changes.append(change)
                if changes:
                    last_sent = clock()
                    yield changes
        finally:
            if alarm is not None:
                alarm.cancel()
            self._subscribers.discard(me)
            if reader is not None:
                self._leave(reader, me)

    def _join(self, tenant_id: str, fsa_id: str | None, position: Position, subscriber: _Subscriber) -> _Reader:
        """The reader of this state (or tenant), started at `position` if there is none yet."""
        key = (tenant_id, fsa_id)
        reader = self._readers.get(key)
        if reader is None or reader.task.done():
            reader = self._readers[key] = _Reader(self, tenant_id, fsa_id, position)
        reader.subscribers.add(subscriber)
        return reader

    def _leave(self, reader: _Reader, subscriber: _Subscriber) -> None:
        reader.subscribers.discard(subscriber)
        if not reader.subscribers:
            reader.task.cancel()
            if self._readers.get((reader.tenant_id, reader.fsa_id)) is reader:
                del self._readers[reader.tenant_id, reader.fsa_id]

    def _next_retry(self, retry: float, rows: list | None, notified: bool, *, replicas: bool) -> float:
        """How soon to read the log again (0: at the next notification or poll).

        On the primary, what a notification announces is readable when it arrives (a state's
        versions and a tenant's feed positions become visible in order), so the feed never waits
        for anything. A replica may not have replayed yet what was notified: after the feed moved,
        or was notified of something it could not read yet, it looks again after 20 ms, then backs
        off towards the poll interval. While the database is away, reads back off up to
        max_retry_delay."""
        if rows is None:
            return min(self.max_retry_delay, max(0.1, retry * 2))
        if not replicas:
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
            await db.check_since(tenant_id, fsa_id, version)
            return Position(version=version)
        state, _, version = str(since).rpartition(":")
        feed_position = await db.feed_position(tenant_id, state, _version(version)) if state else None
        if feed_position is None:
            raise Problem(
                400,
                "invalid-event-id",
                "Unknown event id",
                f"event id {str(since)[:80]!r} names no delta of this tenant (expected fsa:version)",
            )
        return Position(feed_position, state, _version(version))


def _version(text: str) -> int:
    if not text.isdigit() or len(text) > 18:
        raise Problem(400, "invalid-event-id", "Invalid event id", f"{text[:40]!r} is not a version")
    return int(text)


async def _wait(event: asyncio.Event, seconds: float | None) -> bool:
    """Whether the event was set within `seconds` (None: however long it takes)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
