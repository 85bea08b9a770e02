"""The TTL sweeper: every `interval` seconds, the states that have gone their `expires_after`
without a delta are purged (recorded in sms.erasures with actor "ttl") until none is left: a batch
of them is listed (sms.expired_states, every tenant's), then each is expired by a call of its own
(sms.expire_state, which checks it again under the state's lock), in a transaction of its own. On
Citus that call is delegated to the tenant's node, where the state's writers take its lock; one
sweep statement on the coordinator would take the locks there, and is refused. Each process of the
service sweeps; sweeps that meet take turns on each state's lock, and a state one of them purged is
not there for the other."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from app.db.queries import Database
from app.errors import Problem

log = logging.getLogger(__name__)

SWEEP_BATCH = 20  # states listed at a time


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
            expired = await self.db.expired_states(SWEEP_BATCH)
            done = 0
            for tenant_id, fsa_id in expired:
                record = await self.db.expire_state(tenant_id, fsa_id)
                if record is not None:  # else a delta came meanwhile, or another sweep was first
                    log.info("expired %s/%s at version %s", tenant_id, fsa_id, record["last_version"])
                    done += 1
            purged += done
            # a full batch none of which expired (each written meanwhile, or a node's clock behind): next time
            if len(expired) < SWEEP_BATCH or done == 0:
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
