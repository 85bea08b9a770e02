"""Who may do what: the check every request passes before its handler (DESIGN §10).

In order: the path is what it seems (no %2F, valid UTF-8), the Host header names this service
(DNS rebinding), a write carries JSON or nothing and no foreign Origin (CSRF), then the key:

- `Authorization: Bearer <key>` or `X-API-Key: <key>`; a missing, unknown, revoked or expired key
  is a 401 once any key exists (or SMS_AUTH=required).
- Until a key exists the service is in protected mode: it answers loopback clients only, with
  every right, unless started with --insecure-no-auth.
- A state of a tenant the key does not name is a 404, as if nothing were there; a route beyond
  the key's scope (read < write < admin) is a 403; beyond its rate, a 429 with Retry-After.

Routes declare the scope they need in `opt={"scope": …}`; one without is admin-only. The request's
database handle then acts for the key's tenants (the second wall: row-level security).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

from litestar import Request
from litestar.connection import ASGIConnection

from app.db.queries import Database
from app.domain.keys import Principal, key_hash, looks_like_key
from app.errors import Problem, invalid_id, malformed, not_found
from app.settings import Settings

PUBLIC = "public"  # the scope of routes anyone may call: /health and the OpenAPI document
# What a route needs, as its `opt`:
OPEN = {"scope": PUBLIC}
READ = {"scope": "read"}
WRITE = {"scope": "write"}
ADMIN = {"scope": "admin"}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
LEASE_SECONDS = 1.0  # tokens taken from the shared bucket are used within this, or dropped
LEASE_SHARE = 0.05  # a process takes this many seconds' worth of its key's rate at a time
KEY_CACHE_LIMIT = 10_000
HOSTS_REMEMBERED = 256  # Host header values whose check is remembered (any client may send any)
EVERYTHING = Principal(key_id=None, tenants=None, scope="admin")  # no key: protected mode or no auth
CHALLENGE = 'Bearer realm="sms"'


def unauthorized(detail: str, *, invalid: bool = False) -> Problem:
    challenge = CHALLENGE + (', error="invalid_token"' if invalid else "")
    return Problem(401, "unauthorized", "An API key is required", detail, headers={"WWW-Authenticate": challenge})


def forbidden(slug: str, title: str, detail: str) -> Problem:
    return Problem(403, slug, title, detail)


@dataclass
class _Lease:
    """Tokens this process took from a key's shared bucket, and until when they are good."""

    tokens: int = 0
    until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True)
class _Known:
    """What a process read of a key, and until when it trusts that."""

    until: float
    principal: Principal | None  # None: no such key, or revoked
    expires_at: datetime | None = None


class Authenticator:
    """Keys read through the database, cached for `key_cache_seconds`; rate limits taken from
    buckets every process of the service shares (sms.take_tokens), a few tokens at a time."""

    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.hosts = _hosts(settings)
        self._known: dict[bytes, _Known] = {}
        self._keys_exist: tuple[float, bool] = (0.0, False)
        self._leases: dict[str, _Lease] = {}

    def forget(self) -> None:
        """Read keys afresh (after this process made or revoked one)."""
        self._known.clear()
        self._keys_exist = (0.0, False)

    async def keys_exist(self) -> bool:
        until, exist = self._keys_exist
        if exist or time.monotonic() < until:
            return exist  # keys are never deleted: once one exists, it stays so
        exist = await self.db.keys_exist()
        self._keys_exist = (time.monotonic() + self.settings.key_cache_seconds, exist)
        return exist

    async def principal(self, connection: ASGIConnection) -> Principal:
        """Who the request acts as; 401 or 403 (protected mode) when it may not be served."""
        key = _given_key(connection)
        if key is not None:
            return await self._key(key)
        if self.settings.auth == "required" or await self.keys_exist():
            raise unauthorized("send an API key: Authorization: Bearer <key> (or X-API-Key)")
        if self.settings.insecure_no_auth or _is_loopback(connection.client.host if connection.client else None):
            return EVERYTHING
        raise forbidden(
            "protected-mode",
            "The service is in protected mode",
            "no API key exists yet, so only loopback clients are served: make one with `sms keys create` "
            "(or start the service with --insecure-no-auth)",
        )

    async def _key(self, key: str) -> Principal:
        if not looks_like_key(key):
            raise unauthorized("the API key is not one this service made", invalid=True)
        digest = key_hash(key)
        known = self._known.get(digest)
        if known is None or time.monotonic() >= known.until:
            record = await self.db.authenticate(digest)
            if len(self._known) >= KEY_CACHE_LIMIT:
                self._known.clear()
            known = _Known(
                until=time.monotonic() + self.settings.key_cache_seconds,
                principal=Principal.from_key(record) if record and record.get("revoked_at") is None else None,
                expires_at=_timestamp(record.get("expires_at")) if record else None,
            )
            self._known[digest] = known
        if known.principal is None:
            raise unauthorized("the API key is unknown or revoked", invalid=True)
        if known.expires_at is not None and known.expires_at <= datetime.now(UTC):
            raise unauthorized("the API key has expired", invalid=True)
        return known.principal

    async def admit(self, principal: Principal) -> None:
        """Takes a token of the key's rate limit; a 429 with Retry-After when there is none."""
        rate = principal.rate_limit or self.settings.rate_limit
        if principal.key_id is None or rate <= 0:
            return
        burst = max(1.0, 2 * rate)
        lease = self._leases.setdefault(principal.key_id, _Lease())
        if lease.tokens <= 0 or time.monotonic() >= lease.until:
            async with lease.lock:
                if lease.tokens <= 0 or time.monotonic() >= lease.until:
                    wanted = max(1, math.ceil(rate * LEASE_SHARE))
                    granted, retry_after = await self.db.take_tokens(principal.key_id, rate, burst, wanted)
                    if granted == 0:
                        raise Problem(
                            429,
                            "rate-limited",
                            "Too many requests",
                            f"this key may make {rate:g} requests per second (bursts of {burst:g})",
                            headers={"Retry-After": str(max(1, math.ceil(retry_after or 1)))},
                        )
                    lease.tokens, lease.until = granted, time.monotonic() + LEASE_SECONDS
        lease.tokens -= 1


async def authorize(connection: Request) -> None:
    """What every route's requests pass before its handler (see the module's docstring): the app's
    `before_request` hook rather than a guard, which Litestar would hand a copy of the route's
    handler on every request."""
    _check_raw_path(connection)
    auth: Authenticator = connection.app.state.auth
    _check_host(connection, auth.hosts)
    scope = connection.route_handler.opt.get("scope") or (
        PUBLIC if connection.scope["path"].startswith("/schema") else "admin"
    )
    state = connection.state  # a new wrapper of the request's state at each access: one will do
    if scope == PUBLIC:
        state.db = connection.app.state.db  # acting for no tenant
        return
    if connection.scope["method"] in WRITE_METHODS:
        _check_browser_write(connection, auth.settings.cors_origins)
    principal = await auth.principal(connection)
    named = _named_tenants(connection)
    if not all(principal.may_touch(tenant) for tenant in named):
        raise not_found()  # the same answer as for anything that is not there
    if not principal.allows(scope):
        raise forbidden(
            "insufficient-scope",
            "The API key may not do this",
            f"this needs a key with the {scope} scope; the key has {principal.scope}",
        )
    await auth.admit(principal)
    state.principal = principal
    tenants = principal.tenants if principal.tenants is not None else named
    state.db = connection.app.state.db.acting_for(tenants)


def _named_tenants(connection: ASGIConnection) -> list[str]:
    """The tenants a request names: in its path, or as `tenant` / `tenant_id` query parameters."""
    named = [connection.path_params.get("tenant_id")]
    named += connection.query_params.getall("tenant", []) + connection.query_params.getall("tenant_id", [])
    return [tenant for tenant in named if isinstance(tenant, str)]


def _given_key(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization")
    if header is not None:
        kind, _, key = header.strip().partition(" ")
        if kind.lower() != "bearer" or not key.strip():
            raise unauthorized("send the key as Authorization: Bearer <key>", invalid=True)
        return key.strip()
    key = connection.headers.get("x-api-key")
    return key.strip() if key is not None else None


def _check_raw_path(connection: ASGIConnection) -> None:
    """Checks on the path and query as sent, before the server decoded them. An id holding "/"
    (%2F) would address another route, and invalid UTF-8 would be decoded lossily into another id
    or value (as replacement characters): both are refused rather than misread."""
    raw = connection.scope.get("raw_path", b"")
    if b"%2f" in raw.lower():
        raise invalid_id('ids may not contain "/" (%2F)')
    for part, query in ((raw, False), (connection.scope.get("query_string", b""), True)):
        if part.isascii() and b"%" not in part:
            continue  # what most requests send: nothing to decode, and ASCII is UTF-8
        try:
            unquote_to_bytes(part.replace(b"+", b" ") if query else part).decode("utf-8")
        except UnicodeDecodeError:
            where = "query string" if query else "path"
            raise malformed(f"the request {where} is not valid UTF-8 once percent-decoded") from None


def _hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names served (None: any): loopback, the address listened on, SMS_ALLOWED_HOSTS."""
    if "*" in settings.allowed_hosts:
        return None
    hosts = set(LOOPBACK_NAMES) | {host.lower() for host in settings.allowed_hosts}
    if settings.host not in ("0.0.0.0", "::", ""):
        hosts.add(settings.host.lower())
    return frozenset(hosts)


def _host_name(value: str) -> str:
    """The host of a Host header, without port or IPv6 brackets, lower case."""
    return (urlsplit("//" + value).hostname or "").lower()


@functools.lru_cache(maxsize=HOSTS_REMEMBERED)
def _serves_host(value: str, hosts: frozenset[str]) -> bool:
    """Whether a Host header names this service: remembered, as every request sends one of a few."""
    name = _host_name(value)
    return name in hosts or _is_loopback(name)


def _check_host(connection: ASGIConnection, hosts: frozenset[str] | None) -> None:
    """A Host this service does not go by is refused: a page of another site, resolved to this
    address by DNS rebinding, must not read it."""
    if hosts is None:
        return
    if not _serves_host(connection.headers.get("host", ""), hosts):
        raise Problem(
            400,
            "invalid-host",
            "Unknown host",
            "the Host header names a host this service does not serve (list it in SMS_ALLOWED_HOSTS)",
        )


def _check_browser_write(connection: ASGIConnection, origins: tuple[str, ...]) -> None:
    """A write a browser could forge is refused: its body must be JSON (a form or text/plain body
    needs no CORS preflight), and an Origin header must be this service's or a configured one."""
    media_type = connection.headers.get("content-type", "").split(";")[0].strip().lower()
    headers = connection.headers
    has_body = headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers
    if (media_type or has_body) and not (media_type == "application/json" or _is_json_type(media_type)):
        raise Problem(
            415,
            "unsupported-media-type",
            "Writes take JSON",
            f"send the body as application/json (or application/*+json), not {media_type or 'without a type'}",
        )
    origin = connection.headers.get("origin")
    if origin is not None and origin not in origins and urlsplit(origin).netloc != connection.headers.get("host"):
        raise forbidden("forbidden-origin", "Cross-origin writes are refused", f"origin {origin[:100]} may not write")


def _is_json_type(media_type: str) -> bool:
    kind, _, subtype = media_type.partition("/")
    return kind == "application" and subtype.endswith("+json")


@functools.lru_cache(maxsize=HOSTS_REMEMBERED)
def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.removeprefix("::ffff:")).is_loopback
    except ValueError:
        return False


def _timestamp(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value
