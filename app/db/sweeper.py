"""The TTL sweeper: every `interval` seconds, the states that have gone their `expires_after`
without a delta are purged (sms.expire_states, recorded in sms.erasures with actor "ttl"), a batch
at a time until none is left. Each process of the service sweeps; sweeps that meet take turns on
each state's lock, and a state one of them purged is not there for the other."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.db.queries import Database
from app.errors import Problem

log = logging.getLogger(__name__)

SWEEP_BATCH = 20  # states purged per transaction: a batch holds their locks until it commits


class ExpirySweeper:
    """A task that sweeps the TTLs while the service runs."""

    def __init__(self, db: Database, interval: float) -> None:
        self.db = db
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="sms-expiry-sweeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def sweep(self) -> int:
        """One sweep: purges every state past its TTL; how many there were."""
        purged = 0
        while True:
            expired = await self.db.expire_states(SWEEP_BATCH)
            for state in expired:
                log.info("expired %s/%s at version %s", state["tenant_id"], state["fsa_id"], state["last_version"])
            purged += len(expired)
            if len(expired) < SWEEP_BATCH:
                return purged

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.sweep()
            except Problem as problem:  # the database away or busy: the next sweep tries again
                log.warning("the expiry sweep failed: %s; it runs again in %s s", problem.detail, self.interval)
            except Exception:
                log.exception("the expiry sweep failed; it runs again in %s s", self.interval)
