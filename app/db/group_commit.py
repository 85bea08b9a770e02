"""Group commit for hot states (DESIGN §11).

One state is a serial stream of versions: its writers take turns on its lock, and each turn holds
the lock through a WAL flush and a NOTIFY. Here a process sends at most one transaction at a time
per state; deltas that arrive while it is in flight wait for it and then go together, in arrival
order, as ONE call of sms.apply_deltas — one transaction, one flush, one NOTIFY — in which each
delta still gets its own version, log row, checks and result, and a failing one is refused alone.

A delta that finds its state idle is sent at once, alone, through sms.apply_delta: a lone delta
waits for no window. Deltas that find it busy wait for the flight in progress and then, at most
`window` seconds more, until as many are waiting as that flight carried (up to `max_batch`): the
writers it just answered are those most likely to come back with their next delta, and without
that wait the one that came back first would go alone and every other transaction would carry one
delta. Every caller gets exactly what its delta would have got alone: its result, or its Problem.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from app import metrics
from app.db.queries import Database
from app.domain.delta import WriteMeta
from app.errors import Problem

log = logging.getLogger(__name__)

LaneKey = tuple[str, str, tuple[str, ...] | None]  # tenant, state, and the tenants the writes act for


@dataclass(eq=False)
class _Write:
    delta: str
    meta: WriteMeta
    future: asyncio.Future[str]


@dataclass(eq=False)
class _Lane:
    """The writes of one state waiting for the transaction in flight."""

    waiting: list[_Write] = field(default_factory=list)
    arrival: asyncio.Event = field(default_factory=asyncio.Event)  # set when a write joins `waiting`
    carried: int = 1  # deltas in the last flight
    drain: asyncio.Task[None] | None = None  # held here: the event loop keeps only a weak reference


class GroupCommit:
    """Applies the deltas of one process, batching those that meet on a busy state."""

    def __init__(self, *, window: float = 0.002, max_batch: int = 32) -> None:
        self.window = window
        self.max_batch = max(1, max_batch)
        self._lanes: dict[LaneKey, _Lane] = {}
        self.batches = 0  # transactions of more than one delta so far (for tests and metrics)

    async def apply(self, db: Database, tenant_id: str, fsa_id: str, delta: str, meta: WriteMeta) -> str:
        """Apply a delta (JSON text); its result as JSON text, or the Problem it met."""
        key: LaneKey = (tenant_id, fsa_id, None if db.tenants is None else tuple(db.tenants))
        lane = self._lanes.get(key)
        if lane is not None:  # busy: join the next batch
            write = _Write(delta, meta, asyncio.get_running_loop().create_future())
            lane.waiting.append(write)
            lane.arrival.set()
            return await write.future
        lane = self._lanes[key] = _Lane()
        metrics.GROUP_COMMIT_BATCH.observe(1)
        try:
            return await db.apply_delta(tenant_id, fsa_id, delta, meta)
        finally:
            # after the flight: send what waited for it, or free the lane
            if lane.waiting:
                lane.drain = asyncio.create_task(self._drain(key, lane, db), name=f"sms-group-commit {key[:2]}")
            else:
                del self._lanes[key]

    async def _drain(self, key: LaneKey, lane: _Lane, db: Database) -> None:
        loop = asyncio.get_running_loop()
        try:
            while lane.waiting:
                await self._gather(lane, loop.time() + self.window)
                batch, lane.waiting[: self.max_batch] = lane.waiting[: self.max_batch], []
                lane.carried = len(batch)
                try:
                    await self._flight(db, key, batch)
                except Exception:  # its callers have the error; those waiting still get their turn
                    log.exception("a group-commit transaction failed unexpectedly")
        finally:
            for write in lane.waiting:  # only when cancelled (the loop shuts down): nothing was sent
                write.future.cancel()
            del self._lanes[key]

    async def _gather(self, lane: _Lane, deadline: float) -> None:
        """Until as many writes wait as the last flight carried, or the deadline."""
        while len(lane.waiting) < min(lane.carried, self.max_batch):
            lane.arrival.clear()
            try:
                async with asyncio.timeout_at(deadline):
                    await lane.arrival.wait()
            except TimeoutError:
                return

    async def _flight(self, db: Database, key: LaneKey, batch: list[_Write]) -> None:
        """One transaction for the batch; every caller gets its own answer, whatever happens."""
        try:
            results = await self._results(db, key, batch)
        except BaseException as exc:
            for write in batch:
                if not write.future.done():
                    write.future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
            raise
        for write, result in zip(batch, results, strict=True):
            if write.future.done():  # its caller went away
                continue
            if isinstance(result, Problem):
                write.future.set_exception(result)
            else:
                write.future.set_result(result)

    async def _results(self, db: Database, key: LaneKey, batch: list[_Write]) -> list[str | Problem]:
        tenant_id, fsa_id, _ = key
        metrics.GROUP_COMMIT_BATCH.observe(len(batch))
        if len(batch) == 1:
            return [await _alone(db, tenant_id, fsa_id, batch[0])]
        self.batches += 1
        try:
            return await db.apply_deltas(tenant_id, fsa_id, [(write.delta, write.meta) for write in batch])
        except Problem as problem:
            if problem.status >= 500:
                return [problem.copy() for _ in batch]  # the same answer each would have had alone
            # the batch as a whole was refused (one delta's text PostgreSQL would not take as JSON):
            # each delta alone gets its own answer
            return [await _alone(db, tenant_id, fsa_id, write) for write in batch]


async def _alone(db: Database, tenant_id: str, fsa_id: str, write: _Write) -> str | Problem:
    try:
        return await db.apply_delta(tenant_id, fsa_id, write.delta, write.meta)
    except Problem as problem:
        return problem
