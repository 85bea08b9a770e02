"""Settings, read once from the environment (SMS_*)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from app.domain.tokens import tokenizer


def _int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None


def _float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, not {raw!r}") from None


def _list(name: str) -> tuple[str, ...]:
    """A comma-separated list."""
    return tuple(item.strip() for item in os.environ.get(name, "").split(",") if item.strip())


def _urls(name: str) -> tuple[str, ...]:
    """Comma-separated database URLs; a URL's own commas (several hosts: postgresql://a,b/db) stay."""
    raw = os.environ.get(name, "")
    return tuple(url.strip() for url in re.split(r",\s*(?=postgres(?:ql)?://)", raw) if url.strip())


def _listen_url() -> str | None:
    """SMS_LISTEN_DATABASE_URL, which a service behind a transaction pooler needs: LISTEN lasts as
    long as its session, and such a pooler hands the session to another client after each transaction."""
    url = os.environ.get("SMS_LISTEN_DATABASE_URL") or None
    if url is None and _bool("SMS_TRANSACTION_POOLING", False):
        raise SystemExit(
            "SMS_TRANSACTION_POOLING needs SMS_LISTEN_DATABASE_URL: the change feed's LISTEN connection, "
            "to the primary itself (or through a pool in session mode)"
        )
    return url


def _positive(name: str, default: float) -> float:
    value = _float(name, default)
    if not value > 0:
        raise SystemExit(f"{name} must be more than 0, not {value!r}")
    return value


def _bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise SystemExit(f"{name} must be true or false, not {raw!r}")


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = os.environ.get(name, "").strip().lower() or default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def _tokenizer(name: str) -> str | None:
    """A tokenizer's name (app.domain.tokens), loaded now: a wrong one stops the start, not a request."""
    raw = os.environ.get(name, "").strip() or None
    try:
        tokenizer(raw)
    except ValueError as error:
        raise SystemExit(f"{name}: {error}") from None
    return raw


COMPAT_CONTRACTS = ("default", "v2")
LOG_FORMATS = ("text", "json")  # SMS_LOG_FORMAT (app.logs)


@dataclass(frozen=True)
class Limits:
    """Limits on every input; each is configurable through its SMS_MAX_* variable."""

    max_body_bytes: int = 8 * 1024 * 1024  # a full-state replace may be a few MB; deltas are tiny
    max_paths: int = 1000  # paths in one delta
    max_values: int = 250_000  # JSON values in one body (counted as its [ { and , characters)
    max_depth: int = 32  # nesting of JSON values in a body
    max_key_length: int = 512  # a delta path, in characters
    max_id_length: int = 128  # tenant, fsa, actor, lineage and idempotency ids, in characters
    max_batch: int = 64  # writes in one batch (POST /state/{t}/{f}/deltas), each a subtransaction (see below)

    @classmethod
    def from_env(cls) -> Limits:
        return cls(
            max_body_bytes=_int("SMS_MAX_BODY_BYTES", cls.max_body_bytes),
            max_paths=_int("SMS_MAX_PATHS", cls.max_paths),
            max_values=_int("SMS_MAX_VALUES", cls.max_values),
            max_depth=_int("SMS_MAX_DEPTH", cls.max_depth),
            max_key_length=_int("SMS_MAX_KEY_LENGTH", cls.max_key_length),
            max_id_length=_int("SMS_MAX_ID_LENGTH", cls.max_id_length),
            max_batch=_int("SMS_MAX_BATCH", cls.max_batch),
        )


@dataclass(frozen=True)
class Settings:
    """Where the database is, where to listen, who may do what, and the limits.

    With no `database_url` the service starts an embedded PostgreSQL in `data_dir`. Its requests
    run as `api_database_url` (default: `database_url` as the role sms_api, without a password).
    """

    database_url: str | None = None
    api_database_url: str | None = None
    read_database_urls: tuple[str, ...] = ()  # read replicas, each as the requests' role (app.db.queries)
    read_wait_ms: int = 1000  # how long a read naming a version waits for a replica before the primary answers
    listen_database_url: str | None = None  # the change feed's LISTEN connection (default: api_database_url's)
    transaction_pooling: bool = False  # the API and read URLs lead to a pooler in transaction mode (PgBouncer)
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=lambda: Path(platformdirs.user_data_dir("sms")))
    migrate_on_start: bool = True
    pool_min_size: int = 2
    pool_max_size: int = 20
    statement_timeout_ms: int = 5000
    where_timeout_ms: int = 1000  # slices filtered by a `where` predicate, cut off sooner
    notify: bool = True
    keepalive_seconds: float = 15.0  # SSE keep-alive comments on an idle feed
    feed_poll_seconds: float = 5.0  # subscribers re-read the log this often even without NOTIFY
    expiry_sweep_seconds: float = 60.0  # how often states past their TTL are purged (0: never, by this process)
    slice_hits_seconds: float = 1.0  # how often the slice-cache hits counted in memory are added up (app.db.slice_hits)
    snapshot_every: int = 1000  # versions between snapshots: the most an old-version read overlays
    auth: str = "auto"  # "auto": keys once any exists, loopback only until then; "required": keys always
    insecure_no_auth: bool = False  # with no key made, answer every client (not only loopback)
    allowed_hosts: tuple[str, ...] = ()  # Host names served besides loopback and the bound address; "*": any
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API (CORS is off without any)
    rate_limit: float = 100.0  # requests per second per key, bursts of twice that or 1 (0: no limit)
    key_cache_seconds: float = 5.0  # how long a process trusts what it read of a key (revocation delay)
    shutdown_grace_seconds: float = 10.0  # on SIGTERM/SIGINT, how long requests in flight may take to finish
    compat: str = "default"  # "v2": the original second-generation service's wire contract (app.api.compat)
    group_commit: bool = True  # concurrent deltas to one state share one transaction (app.db.group_commit)
    group_commit_window_ms: float = 2.0  # the most a delta that finds its state busy waits for others to join it
    group_commit_max: int = 32  # deltas per transaction: each is a subtransaction, and past 64 every snapshot slows
    tokenizer: str | None = None  # how summaries count tokens: "tiktoken:cl100k_base"; None: a conservative estimate
    log_format: str = "text"  # "json": one JSON object per log line (app.logs)
    request_log: bool = True  # a log line per request (some 25 µs each: a hot state may do without)
    metrics_public: bool = False  # GET /metrics for anyone, not only admin keys (no label names a tenant)
    tracing: bool = False  # an OpenTelemetry span per request, continuing its traceparent (the otel extra)
    drain_seconds: float = 0.0  # after a stop signal, serve on this long with /health/ready at 503 first
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls) -> Settings:
        data_dir = os.environ.get("SMS_DATA_DIR")
        return cls(
            database_url=os.environ.get("SMS_DATABASE_URL") or None,
            api_database_url=os.environ.get("SMS_API_DATABASE_URL") or None,
            read_database_urls=_urls("SMS_READ_DATABASE_URL"),
            read_wait_ms=_int("SMS_READ_WAIT_MS", cls.read_wait_ms),
            listen_database_url=_listen_url(),
            transaction_pooling=_bool("SMS_TRANSACTION_POOLING", cls.transaction_pooling),
            host=os.environ.get("SMS_HOST", cls.host),
            port=_int("SMS_PORT", cls.port),
            data_dir=Path(data_dir) if data_dir else Path(platformdirs.user_data_dir("sms")),
            migrate_on_start=_bool("SMS_MIGRATE_ON_START", cls.migrate_on_start),
            pool_min_size=_int("SMS_POOL_MIN_SIZE", cls.pool_min_size),
            pool_max_size=_int("SMS_POOL_MAX_SIZE", cls.pool_max_size),
            statement_timeout_ms=_int("SMS_STATEMENT_TIMEOUT_MS", cls.statement_timeout_ms),
            where_timeout_ms=_int("SMS_WHERE_TIMEOUT_MS", cls.where_timeout_ms),
            notify=_bool("SMS_NOTIFY", cls.notify),
            keepalive_seconds=_int("SMS_KEEPALIVE_SECONDS", int(cls.keepalive_seconds)),
            feed_poll_seconds=_int("SMS_FEED_POLL_SECONDS", int(cls.feed_poll_seconds)),
            expiry_sweep_seconds=_float("SMS_EXPIRY_SWEEP_SECONDS", cls.expiry_sweep_seconds),
            slice_hits_seconds=_positive("SMS_SLICE_HITS_SECONDS", cls.slice_hits_seconds),
            snapshot_every=_int("SMS_SNAPSHOT_EVERY", cls.snapshot_every),
            auth=_choice("SMS_AUTH", cls.auth, ("auto", "required")),
            insecure_no_auth=_bool("SMS_INSECURE_NO_AUTH", cls.insecure_no_auth),
            allowed_hosts=_list("SMS_ALLOWED_HOSTS"),
            cors_origins=_list("SMS_CORS_ORIGINS"),
            rate_limit=_float("SMS_RATE_LIMIT", cls.rate_limit),
            key_cache_seconds=_float("SMS_KEY_CACHE_SECONDS", cls.key_cache_seconds),
            shutdown_grace_seconds=_float("SMS_SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds),
            compat=_choice("SMS_COMPAT", cls.compat, COMPAT_CONTRACTS),
            group_commit=_bool("SMS_GROUP_COMMIT", cls.group_commit),
            group_commit_window_ms=_float("SMS_GROUP_COMMIT_WINDOW_MS", cls.group_commit_window_ms),
            group_commit_max=_int("SMS_GROUP_COMMIT_MAX", cls.group_commit_max),
            tokenizer=_tokenizer("SMS_TOKENIZER"),
            log_format=_choice("SMS_LOG_FORMAT", cls.log_format, LOG_FORMATS),
            request_log=_bool("SMS_REQUEST_LOG", cls.request_log),
            metrics_public=_bool("SMS_METRICS_PUBLIC", cls.metrics_public),
            tracing=_bool("SMS_TRACING", cls.tracing),
            drain_seconds=_float("SMS_DRAIN_SECONDS", cls.drain_seconds),
            limits=Limits.from_env(),
        )
