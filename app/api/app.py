"""The Litestar application: lifespan owns the database pool; every error leaves as problem+json."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from urllib.parse import unquote_to_bytes

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig

from app import __version__
from app.api.events import EVENT_ROUTES
from app.api.history import HISTORY_ROUTES
from app.api.routes import ROUTES
from app.db.listener import Listener
from app.db.queries import Database
from app.domain import jsontext
from app.errors import Problem, invalid_id, malformed
from app.feed import Feed
from app.settings import Settings

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> Response:
    body = jsontext.encode(problem.to_dict())  # exact numbers in reported values
    return Response(body, status_code=problem.status, media_type=PROBLEM_JSON, headers=headers)


def _on_problem(_: Request, exc: Problem) -> Response:
    headers = {"ETag": f'"{exc.extra["current_version"]}"'} if "current_version" in exc.extra else None
    return problem_response(exc, headers)


_HTTP_SLUGS = {
    400: "malformed-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "limit-exceeded",
    415: "unsupported-media-type",
}


def _on_http_exception(_: Request, exc: HTTPException) -> Response:
    slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
    detail = exc.detail
    extra = exc.extra if isinstance(exc.extra, dict) else {}
    if isinstance(exc.extra, list) and exc.extra:
        detail = f"{detail}: " + "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in exc.extra
        )
    problem = Problem(exc.status_code, slug, str(exc.detail), str(detail), **extra)
    return problem_response(problem, getattr(exc, "headers", None))


def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem_response(Problem(500, "internal-error", "Internal error", "an unexpected error occurred"))


def _check_raw_path(request: Request) -> None:
    """Checks on the path as sent, before the server decoded it. An id holding "/" (%2F) would
    address another route, and invalid UTF-8 would be decoded lossily into another id: both
    are refused rather than misrouted."""
    raw = request.scope.get("raw_path", b"")
    if b"%2f" in raw.lower():
        raise invalid_id('ids may not contain "/" (%2F)')
    try:
        unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise malformed("the request path is not valid UTF-8 once percent-decoded") from None


def create_app(settings: Settings, database_url: str) -> Litestar:
    """The service, serving `database_url` (already migrated) within `settings`."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.db = await Database.connect(
            database_url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            statement_timeout_ms=settings.statement_timeout_ms,
            notify=settings.notify,
            snapshot_every=settings.snapshot_every,
        )
        listener = Listener(database_url)
        await listener.start()
        app.state.feed = Feed(app.state.db, listener, poll_interval=settings.feed_poll_seconds)
        try:
            yield
        finally:
            await listener.stop()
            await app.state.db.close()

    def provide_db(state: State) -> Database:
        return state.db

    def provide_feed(state: State) -> Feed:
        return state.feed

    return Litestar(
        route_handlers=[*ROUTES, *EVENT_ROUTES, *HISTORY_ROUTES],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        dependencies={
            "db": Provide(provide_db, sync_to_thread=False),
            "feed": Provide(provide_feed, sync_to_thread=False),
        },
        exception_handlers={
            Problem: _on_problem,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        before_request=_check_raw_path,
        request_max_body_size=settings.limits.max_body_bytes,
        openapi_config=OpenAPIConfig(title="State Memory Service", version=__version__),
    )
