"""The service as an ASGI application, for servers that import it by name and run it in workers:

    SMS_DATABASE_URL=postgresql://… granian --interface asgi --factory app.asgi:create --workers 2
    SMS_DATABASE_URL=postgresql://… uvicorn --factory app.asgi:create --workers 2

Every worker process calls `create()` and has its own pool, listener and group-commit batches;
everything else comes from the SMS_* variables (app.settings), except what the server's own options
decide (address, port, workers, event loop). The database must be migrated already (`sms migrate`):
workers starting together must not race to migrate it, and there is no embedded PostgreSQL here,
whose start and stop belong to the one process of `sms serve`.

With uvicorn, more than one worker and no uvloop (`pip install uvloop`, or uvicorn[standard]),
every answer waits ~40 ms: uvicorn then binds the socket itself, and asyncio sets TCP_NODELAY only
on sockets it made (`python -m bench servers` shows it); uvloop and granian set it themselves.

Like `sms serve`, a stop signal first ends every SSE stream with its `shutdown` event (telling the
client where to resume), so that the server's wait for the requests in flight is not a wait for
subscribers that never leave.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from types import FrameType

from litestar import Litestar

from app import logs
from app.api.app import begin_shutdown, create_app
from app.settings import Settings

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def create() -> Litestar:
    """The app on SMS_DATABASE_URL within the settings of the environment."""
    settings = Settings.from_env()
    if not settings.database_url:
        raise SystemExit(
            "app.asgi needs SMS_DATABASE_URL (a migrated database: run `sms migrate` first); "
            "`sms serve` is the way to run the service on its embedded PostgreSQL"
        )
    logs.configure(settings.log_format)  # the service's lines; the server's own keep the server's format
    app = create_app(settings, settings.database_url)
    app.on_startup.append(_end_streams_on_stop_signal)
    return app


def _end_streams_on_stop_signal(app: Litestar) -> None:
    """Chains `begin_shutdown` before the server's own handlers of SIGINT and SIGTERM (a startup hook).

    Servers install those handlers before the app starts (uvicorn with signal.signal, granian's
    workers with loop.add_signal_handler, whose Python-level handler is a no-op beside the loop's
    wakeup fd), so wrapping the handler in place keeps whatever the server does on a signal."""
    if threading.current_thread() is not threading.main_thread():
        log.warning("app.asgi: not in the main thread; SSE streams will not end early on a stop signal")
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def on_stop(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(begin_shutdown, app)
        previous[sig](sig, frame)

    for sig, handler in previous.items():
        if callable(handler):  # a server with no handler of its own dies on the signal anyway
            signal.signal(sig, on_stop)
