"""What a process of the service does every so often while it serves: the TTL sweep
(app.db.sweeper) and adding up the slice-cache hits (app.db.slice_hits)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app.errors import Problem

log = logging.getLogger(__name__)


class Periodic:
    """`job` every `interval` seconds, in a task of its own from start() to stop(). A job that
    fails is logged and runs again at the next interval; with `last`, stop() runs it once more."""

    def __init__(self, name: str, job: Callable[[], Awaitable[object]], interval: float, *, last: bool = False) -> None:
        self.name = name
        self.job = job
        self.interval = interval
        self.last = last
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"sms {self.name}")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        if self.last:
            await self._once()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._once()

    async def _once(self) -> None:
        try:
            await self.job()
        except Problem as problem:  # the database away or busy: the next time tries again
            log.warning("%s failed: %s; it runs again in %s s", self.name, problem.detail, self.interval)
        except Exception:
            log.exception("%s failed; it runs again in %s s", self.name, self.interval)
