"""Watching the service run (DESIGN §14): request ids, metrics, the request log, traces, and the
health checks a load balancer or an orchestrator asks.

- Every request gets an id: its `X-Request-ID` when it sends a sane one, else a fresh one; the
  answer echoes it in `X-Request-ID`, and its log line and span carry it.
- `RequestObserver` wraps the whole application (outside routing, so an unknown path and an
  answer made by an exception handler are seen too): it times each request into
  `sms_http_request_duration_seconds` by method, route template and status, writes one log line
  per request unless SMS_REQUEST_LOG is off (logger `app.requests`: request id, method, route,
  path, status, duration, tenant, actor, key id, client, trace id; never a header, so never a
  key), and with SMS_TRACING makes the request an OpenTelemetry span that continues the caller's
  W3C `traceparent`.
- `GET /metrics`: Prometheus text, for an admin key (or to anyone with SMS_METRICS_PUBLIC). No
  label names a tenant (app.metrics).
- `GET /health/live`: the process answers. `GET /health/ready`: the database answers and is
  migrated to this service's head revision, and the service is not draining; else a 503.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import re
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any
from urllib.parse import parse_qs

import prometheus_client
from litestar import Response, get
from litestar.datastructures import State
from litestar.handlers import HTTPRouteHandler
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app import metrics
from app.api.auth import ADMIN, OPEN
from app.api.schemas import Answer, documented
from app.db import migrate
from app.db.queries import Database
from app.errors import Problem

log = logging.getLogger("app.requests")

REQUEST_ID_HEADER = b"x-request-id"
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # short and plain: safe in a log line and a header
_TEMPLATE_TYPES = re.compile(r"\{(\w+):\w+\}")  # /state/{tenant_id:str} -> /state/{tenant_id}
UNMATCHED = "unmatched"  # the route label of a request no route took: never its raw path
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
MAX_LOGGED = 128  # characters of a tenant, actor or path in a log line

# The request's span while it is served, for the handlers' attributes (None: tracing is off).
_current_span: ContextVar[Any] = ContextVar("sms_request_span", default=None)


def annotate_span(**attributes: Any) -> None:
    """Attributes on the request's span, when tracing is on (e.g. a delta's version)."""
    span = _current_span.get()
    if span is not None:
        span.set_attributes(attributes)


class RequestObserver:
    """The ASGI application around the service's: request id, metrics, request log and span."""

    def __init__(self, app: ASGIApp, *, tracing: bool, request_log: bool) -> None:
        self.app = app
        self.tracer = _Tracer() if tracing else None
        self.request_log = request_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        status = 500  # if the application fails before it answers

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        method = scope["method"] if scope["method"] in METHODS else "other"
        started = time.perf_counter()
        span = self.tracer.start(scope, method, request_id) if self.tracer else None
        metrics.REQUESTS_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.REQUESTS_IN_FLIGHT.dec()
            elapsed = time.perf_counter() - started
            route = _route(scope.get("path_template"))
            _duration(method, route, status).observe(elapsed)
            trace_id = self.tracer.end(span, method, route, status) if self.tracer else None
            if self.request_log and log.isEnabledFor(logging.INFO):
                _log_request(scope, request_id, method, route, status, elapsed, trace_id)


class _Tracer:
    """Spans through OpenTelemetry's global tracer provider (the `otel` extra; `sms serve` sets
    one up that exports over OTLP unless the process already has one)."""

    def __init__(self) -> None:
        try:  # an optional dependency, imported only when tracing is asked for
            from opentelemetry import context, propagate, trace
        except ImportError:
            raise SystemExit("sms: SMS_TRACING needs OpenTelemetry: pip install 'state-memory-service[otel]'") from None
        self.context = context
        self.propagate = propagate
        self.trace = trace
        self.tracer = trace.get_tracer("app.api")

    def start(self, scope: Scope, method: str, request_id: str) -> tuple[Any, object, object]:
        """A server span for the request, child of the caller's `traceparent` if it sent one, made
        the current span (and the handlers' `annotate_span` target)."""
        carrier = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        span = self.tracer.start_span(
            method,  # named after its route once routing has found it
            context=self.propagate.extract(carrier),
            kind=self.trace.SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"], "sms.request_id": request_id},
        )
        return span, self.context.attach(self.trace.set_span_in_context(span)), _current_span.set(span)

    def end(self, started: tuple[Any, object, Any], method: str, route: str, status: int) -> str:
        """Ends the span with the route and status; its trace id, for the request's log line."""
        span, token, current = started
        span.update_name(f"{method} {route}")
        span.set_attributes({"http.route": route, "http.response.status_code": status})
        if status >= 500:
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR))
        span.end()
        self.context.detach(token)
        _current_span.reset(current)
        return format(span.get_span_context().trace_id, "032x")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER:
            given = value.decode("latin-1")
            if _SANE_REQUEST_ID.match(given):
                return given
            break
    # an id to find a request by, not a secret: no system call for the randomness of uuid4
    return f"{random.getrandbits(128):032x}"


@functools.lru_cache(maxsize=4096)
def _duration(method: str, route: str, status: int) -> Any:
    """The request duration histogram's series of a method, route and status: remembered, as the
    label look-up (a lock, the labels checked and joined) would cost every request again. Each of
    the three comes from a bounded set; the bound is there all the same."""
    return metrics.REQUEST_DURATION.labels(method, route, str(status))


@functools.cache
def _route(template: str | None) -> str:
    """The route label: the path template without parameter types (a bounded set), or UNMATCHED."""
    return _TEMPLATE_TYPES.sub(r"{\1}", template) if template else UNMATCHED


def _log_request(
    scope: Scope, request_id: str, method: str, route: str, status: int, elapsed: float, trace_id: str | None
) -> None:
    principal = scope.get("state", {}).get("principal")
    key_actor = getattr(principal, "actor", None)
    fields = {
        "request_id": request_id,
        "method": method,
        "route": route,
        "path": scope["path"][:MAX_LOGGED],
        "status": status,
        "duration_ms": round(elapsed * 1000, 2),
        "tenant": _tenant(scope),
        "actor": key_actor or _claimed_actor(scope),
        "key_id": getattr(principal, "key_id", None),
        "client": scope["client"][0] if scope.get("client") else None,
        "trace_id": trace_id,
    }
    log.info("%s %s %s %.1f ms", method, route, status, elapsed * 1000, extra={"fields": fields})


def _tenant(scope: Scope) -> str | None:
    tenant = scope.get("path_params", {}).get("tenant_id")
    if tenant is None and scope.get("query_string"):
        query = parse_qs(scope["query_string"].decode("latin-1"))
        tenant = next(iter(query.get("tenant_id", query.get("tenant", []))), None)
    return tenant[:MAX_LOGGED] if isinstance(tenant, str) else None


def _claimed_actor(scope: Scope) -> str | None:
    """The actor a request names (X-Actor, or ?actor=) when its key names none."""
    for name, value in scope["headers"]:
        if name == b"x-actor":
            return value.decode("latin-1")[:MAX_LOGGED]
    if b"actor=" in scope.get("query_string", b""):
        actors = parse_qs(scope["query_string"].decode("latin-1")).get("actor")
        return actors[0][:MAX_LOGGED] if actors else None
    return None


@contextlib.contextmanager
def counting_delta() -> Iterator[None]:
    """Counts the delta written within: applied when the block ends, else refused with its reason."""
    try:
        yield
    except Problem as problem:
        count_refused(problem)
        raise
    metrics.DELTAS_APPLIED.inc()


def count_refused(problem: Problem) -> None:
    metrics.DELTAS_REFUSED.labels(metrics.refusal_reason(problem.status, problem.slug)).inc()


# ---------------------------------------------------------------- drain and health


def begin_drain(state: State) -> None:
    """From now on /health/ready answers 503, so that load balancers send no new requests; the
    service still serves those that come."""
    state.draining = True


def not_ready(detail: str) -> Problem:
    return Problem(503, "not-ready", "The service is not ready", detail)


@functools.cache
def _schema_revisions() -> tuple[str, frozenset[str]]:
    return migrate.revisions()


@get(
    "/health/live",
    opt=OPEN,
    sync_to_thread=False,
    operation_class=documented(Answer("Liveness", "The process answers"), problems=(400, 503), public=True),
)
def live() -> dict[str, str]:
    """Liveness: the process answers (nothing else is asked; restart it when this fails)."""
    return {"status": "ok"}


@get(
    "/health/ready",
    opt=OPEN,
    operation_class=documented(
        Answer("Readiness", "The service may be sent requests"), problems=(400, 503), public=True
    ),
)
async def ready(state: State) -> dict[str, str]:
    """Readiness: the database answers, is migrated to this service's head revision (or a newer
    one, from a later release of the service), and the service is not draining; else a 503
    not-ready saying which. A load balancer sends requests only to a ready service."""
    if state.get("draining"):
        raise not_ready("the service is shutting down")
    db: Database = state.db
    try:
        revision = await db.schema_revision()
    except Problem as problem:
        if problem.status != 503:
            raise
        raise not_ready(f"the database is unavailable: {problem.detail}") from None
    head, known = _schema_revisions()
    if revision != head and (revision is None or revision in known):
        at = f"revision {revision}" if revision else "an older revision"
        raise not_ready(f"the database is at {at} and this service needs {head}: run `sms migrate`")
    return {"status": "ready", "schema_revision": revision or head}


def metrics_route(public: bool) -> HTTPRouteHandler:
    """GET /metrics: for an admin key (of any tenant: no label names one), or anyone when `public`."""

    @get("/metrics", opt=OPEN if public else ADMIN, include_in_schema=False)
    async def read_metrics(state: State) -> Response:
        """The service's metrics in Prometheus's text format."""
        _refresh_gauges(state)
        return Response(prometheus_client.generate_latest(), media_type=prometheus_client.CONTENT_TYPE_LATEST)

    return read_metrics


def _refresh_gauges(state: State) -> None:
    """The gauges that say how things are now, read from this service's pool and feed."""
    db: Database = state.db
    in_use, size, max_size = db.pool_usage()
    metrics.POOL_IN_USE.set(in_use)
    metrics.POOL_SIZE.set(size)
    metrics.POOL_MAX.set(max_size)
    feed = state.feed
    metrics.FEED_SUBSCRIBERS.set(feed.subscribers)
    metrics.FEED_READERS.set(feed.readers)
    metrics.LISTENER_CONNECTED.set(1 if feed.listener.connected.is_set() else 0)


OBSERVABILITY_ROUTES = [live, ready]


def export_traces() -> None:
    """For `sms serve` with SMS_TRACING: unless the process has a tracer provider already (run under
    `opentelemetry-instrument`, say), one that sends the spans over OTLP/HTTP as the standard OTEL_*
    variables say (OTEL_EXPORTER_OTLP_ENDPOINT, default http://localhost:4318; OTEL_SERVICE_NAME,
    default state-memory-service; …)."""
    try:  # the `otel` extra
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise SystemExit("sms: SMS_TRACING needs OpenTelemetry: pip install 'state-memory-service[otel]'") from None
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return
    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: "state-memory-service"}))
    provider = TracerProvider(resource=resource)  # flushes its spans when the process exits
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
