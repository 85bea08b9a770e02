"""The Litestar application: lifespan owns the database pool; every error leaves as problem+json."""

from __future__ import annotations

import contextlib
import gc
import importlib.util
import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

from litestar import HttpMethod, Litestar, Request, Response, route
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import HTTPException
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin, YamlRenderPlugin
from litestar.static_files import create_static_files_router

from app import __version__
from app.api import compat
from app.api.auth import OPEN, Authenticator, authorize
from app.api.events import EVENT_ROUTES
from app.api.history import HISTORY_ROUTES
from app.api.keys import KEY_ROUTES
from app.api.lifecycle import LIFECYCLE_ROUTES
from app.api.observability import OBSERVABILITY_ROUTES, RequestObserver, begin_drain, metrics_route
from app.api.policies import POLICY_ROUTES
from app.api.routes import ROUTES
from app.api.schemas import add_components
from app.api.ui import UI_ROUTES
from app.db.group_commit import GroupCommit
from app.db.listener import Listener
from app.db.periodic import Periodic
from app.db.queries import Database
from app.db.roles import api_database_url
from app.db.sweeper import sweep_expired
from app.domain import jsontext
from app.errors import Problem
from app.feed import Feed
from app.settings import Settings

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
RETRY_AFTER_SECONDS = "1"  # after a 503: the database is restarting, busy or out of reach


def problem_response(request: Request, problem: Problem) -> Response:
    """The problem as application/problem+json. A 503 says when to retry and, for a write, that it
    may have been applied all the same (the commit may have happened before the connection was
    lost): a retry with the same Idempotency-Key is safe and tells."""
    headers = dict(problem.headers)
    if "current_version" in problem.extra:
        headers["ETag"] = f'"{problem.extra["current_version"]}"'
    body = problem.to_dict()
    if problem.status == 503:
        headers.setdefault("Retry-After", RETRY_AFTER_SECONDS)
        if request.method in WRITE_METHODS:
            body["detail"] += "; the write may or may not have been applied: retry it with the same Idempotency-Key"
            body["outcome"] = "unknown"
    mapped = compat.refusal(request, problem, headers)
    if mapped is not None:
        return mapped
    # exact numbers in reported values
    return Response(jsontext.encode(body), status_code=problem.status, media_type=PROBLEM_JSON, headers=headers)


def _on_problem(request: Request, exc: Problem) -> Response:
    return problem_response(request, exc)


_HTTP_SLUGS = {
    400: "malformed-request",
    404: "not-found",
    405: "method-not-allowed",
    413: "limit-exceeded",
    415: "unsupported-media-type",
}


def _on_http_exception(request: Request, exc: HTTPException) -> Response:
    slug = _HTTP_SLUGS.get(exc.status_code, "http-error")
    detail = exc.detail
    extra = exc.extra if isinstance(exc.extra, dict) else {}
    if isinstance(exc.extra, list) and exc.extra:
        detail = f"{detail}: " + "; ".join(
            str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in exc.extra
        )
    headers = getattr(exc, "headers", None) or {}
    return problem_response(request, Problem(exc.status_code, slug, str(exc.detail), str(detail), headers, **extra))


def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return problem_response(request, Problem(500, "internal-error", "Internal error", "an unexpected error occurred"))


# Headers a browser page on a configured origin may send and read (SMS_CORS_ORIGINS).
CORS_REQUEST_HEADERS = [
    "authorization",
    "x-api-key",
    "content-type",
    "if-match",
    "if-none-match",
    "idempotency-key",
    "last-event-id",
    "traceparent",
    "x-actor",
    "x-lineage-id",
    "x-request-id",
]
CORS_RESPONSE_HEADERS = ["etag", "retry-after", "www-authenticate", "x-request-id"]


def allow_routes(handlers: Iterable[HTTPRouteHandler]) -> list[HTTPRouteHandler]:
    """An OPTIONS route for each path, whose Allow names every method of the path. Litestar 2 makes
    one itself from the first handler registered on a path only (litestar#4169, fixed in 3.0), so
    its Allow would leave out the others; these, registered first, take its place."""
    methods: dict[str, set[str]] = defaultdict(lambda: {"OPTIONS"})
    for handler in handlers:
        for path in handler.paths:
            methods[path] |= handler.http_methods

    def options_route(path: str, allow: str) -> HTTPRouteHandler:
        def options() -> Response:
            return Response(None, status_code=204, headers={"Allow": allow})

        return route(
            path,
            http_method=[HttpMethod.OPTIONS],
            name=f"options {path}",
            opt=OPEN,
            include_in_schema=False,
            sync_to_thread=False,
        )(options)

    return [options_route(path, ", ".join(sorted(allowed))) for path, allowed in methods.items()]


# Swagger UI's own files (the swagger-ui-py package ships Swagger UI 5, which reads OpenAPI 3.1),
# served here so that /schema/swagger works without reaching any other host.
SWAGGER_UI = "/schema/assets/swagger-ui"


def swagger_ui_files() -> Path:
    spec = importlib.util.find_spec("swagger_ui")  # its files, without importing its web-framework glue
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the swagger-ui-py package is missing")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def openapi_config() -> OpenAPIConfig:
    """/schema/openapi.json (and .yaml), and Swagger UI at /schema and /schema/swagger."""
    return OpenAPIConfig(
        title="State Memory Service",
        version=__version__,
        description="A shared, versioned JSON state per (tenant, state) for many LLM agents: small slices, tiny "
        "deltas merged in PostgreSQL, and a change feed. Errors are RFC 9457 application/problem+json.",
        render_plugins=[
            SwaggerRenderPlugin(
                js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
                css_url=f"{SWAGGER_UI}/swagger-ui.css",
                standalone_preset_js_url=f"{SWAGGER_UI}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{SWAGGER_UI}/favicon-32x32.png'>",
                path="/swagger",
            ),
            YamlRenderPlugin(),
        ],
    )


def begin_shutdown(app: Litestar) -> None:
    """The first step of a graceful shutdown, before the server waits for the requests in flight:
    end every SSE stream (with its `shutdown` event), since those would never finish by themselves.
    Streams asked for from now on end at once the same way, and /health/ready answers 503."""
    begin_drain(app.state)
    feed: Feed | None = app.state.get("feed")
    if feed is not None:
        feed.close()


def create_app(settings: Settings, database_url: str) -> Litestar:
    """The service, serving `database_url` (already migrated) within `settings`. Its requests run
    as the role of `settings.api_database_url` (default: sms_api on the same server)."""
    api_url = settings.api_database_url or api_database_url(database_url)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        app.state.db = db = await Database.connect(
            api_url,
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            statement_timeout_ms=settings.statement_timeout_ms,
            notify=settings.notify,
            snapshot_every=settings.snapshot_every,
            where_timeout_ms=settings.where_timeout_ms,
            max_depth=settings.limits.max_depth,
            max_key_length=settings.limits.max_key_length,
            read_dsns=settings.read_database_urls,
            read_wait_ms=settings.read_wait_ms,
            transaction_pooling=settings.transaction_pooling,
        )
        listener = Listener(settings.listen_database_url or api_url)
        sweeper = Periodic("the expiry sweep", lambda: sweep_expired(db), settings.expiry_sweep_seconds)
        hits = Periodic("adding up the slice-cache hits", db.flush_slice_hits, settings.slice_hits_seconds, last=True)
        try:
            await db.check_role()
            await listener.start()
            app.state.auth = Authenticator(settings, db)
            app.state.feed = Feed(db, listener, poll_interval=settings.feed_poll_seconds)
            app.state.group_commit = (
                GroupCommit(window=settings.group_commit_window_ms / 1000, max_batch=settings.group_commit_max)
                if settings.group_commit
                else None
            )
            if settings.expiry_sweep_seconds > 0:
                sweeper.start()
            hits.start()
            # What the service holds while it serves (its app, routes, schemas, code) is set aside from
            # the cycle collector: each full collection walked all of it, a ~70 ms pause about once a
            # second under load, which every request in flight waited through (the p99 of a hot
            # state). Given back at shutdown, so that an app stopped in a longer-lived process
            # (tests, an embedding program) can still be collected.
            gc.freeze()
            yield
        finally:
            gc.unfreeze()
            await sweeper.stop()
            await hits.stop()  # adds up the last hits, with the pool still open
            await listener.stop()
            await db.close()

    def provide_db(request: Request) -> Database:
        return request.state.db  # acting for the request's tenants (app.api.auth.authorize, before every handler)

    def provide_feed(state: State) -> Feed:
        return state.feed

    cors = None
    if settings.cors_origins:
        cors = CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=CORS_REQUEST_HEADERS,
            expose_headers=CORS_RESPONSE_HEADERS,
            allow_credentials=False,  # keys travel in headers, never in cookies
        )
    handlers = [
        *ROUTES,
        *EVENT_ROUTES,
        *HISTORY_ROUTES,
        *POLICY_ROUTES,
        *KEY_ROUTES,
        *LIFECYCLE_ROUTES,
        *OBSERVABILITY_ROUTES,
        metrics_route(settings.metrics_public),
    ]
    app = Litestar(
        route_handlers=[
            *allow_routes(handlers),
            *handlers,
            create_static_files_router(SWAGGER_UI, [swagger_ui_files()], include_in_schema=False, opt=OPEN),
            *UI_ROUTES,
        ],
        lifespan=[lifespan],
        state=State({"settings": settings}),
        before_request=authorize,
        dependencies={
            "db": Provide(provide_db, sync_to_thread=False),
            "feed": Provide(provide_feed, sync_to_thread=False),
        },
        exception_handlers={
            Problem: _on_problem,
            HTTPException: _on_http_exception,
            Exception: _on_unexpected,
        },
        cors_config=cors,
        logging_config=None,  # the process's logging is app.logs's (SMS_LOG_FORMAT), not one of Litestar's
        request_max_body_size=settings.limits.max_body_bytes,
        openapi_config=openapi_config(),
    )
    add_components(app, settings)
    # outermost, around routing and the exception handlers: it sees every request and its final status
    app.asgi_handler = RequestObserver(app.asgi_handler, tracing=settings.tracing, request_log=settings.request_log)
    return app
