"""Async Python client for the State Memory Service (DESIGN §8).

    async with StateMemoryClient("http://127.0.0.1:8080") as sms:
        view = await sms.get_slice("acme", "launch", "task:DESIGN_*", k=5)
        await sms.apply_delta("acme", "launch", {"tasks.DESIGN_001.status": "DONE"}, actor="DesignBot")

Every request is safe to retry, so transient failures (connection errors, timeouts, 502/503/504,
and 429 after its Retry-After) are retried with capped exponential backoff and jitter: writes carry
an idempotency key (generated when none is given), reused on every retry, so a write answered 503
— which may have been applied before the connection was lost — applies exactly once. Numbers
are exact both ways (decimals are `Decimal`). Errors are typed exceptions built from the
service's problem+json; a call never returns None. `SyncStateMemoryClient` is the blocking form.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import random
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from state_memory_client import __version__, jsontext

RETRY_STATUSES = frozenset({429, 502, 503, 504})
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
BACKOFF_BASE = 0.1  # seconds before the first retry; doubled on each next one
BACKOFF_CAP = 2.0
DELTA_PAGE = 1000  # the service's largest page of the delta log


class StateMemoryError(Exception):
    """The service refused the request or could not be reached."""

    def __init__(self, detail: str, *, status: int | None = None, type: str | None = None, body: Any = None) -> None:
        super().__init__(f"{status} {type or ''}: {detail}" if status else detail)
        self.detail = detail
        self.status = status
        self.type = type
        self.body = body


class ConflictError(StateMemoryError):
    """409: the state moved on (expected_version), a $expect failed, or an idempotency key was reused."""

    @property
    def current_version(self) -> int | None:
        return self.body.get("current_version") if isinstance(self.body, dict) else None

    @property
    def current(self) -> dict[str, Any] | None:
        """The current values at the delta's paths (version conflict) or expected paths ($expect)."""
        return self.body.get("current") if isinstance(self.body, dict) else None


class ValidationError(StateMemoryError):
    """422 or 400: the request is malformed or the delta is invalid; nothing was applied."""


class PolicyViolationError(ValidationError):
    """422: the delta breaks a policy rule; nothing was applied. `violations` lists each rule."""

    @property
    def violations(self) -> list[dict[str, Any]]:
        return self.body.get("violations", []) if isinstance(self.body, dict) else []


class AuthenticationError(StateMemoryError):
    """401: the API key is missing, unknown, revoked or expired."""


class PermissionDeniedError(StateMemoryError):
    """403: the key's scope does not allow this (or the service is in protected mode)."""


class RateLimitedError(StateMemoryError):
    """429: the key's rate limit held through every retry."""


class NotFoundError(StateMemoryError):
    """404: no such route."""


class PayloadTooLargeError(StateMemoryError):
    """413: a body, value or count is over the service's limits."""


class ServiceUnavailableError(StateMemoryError):
    """The service stayed unavailable (502/503/504 or no connection) through every retry."""


_ERRORS: dict[int, type[StateMemoryError]] = {
    400: ValidationError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    429: RateLimitedError,
    422: ValidationError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    502: ServiceUnavailableError,
    503: ServiceUnavailableError,
    504: ServiceUnavailableError,
}


@dataclass(frozen=True)
class State:
    """The whole state at a version."""

    tenant_id: str
    fsa_id: str
    version: int
    state: dict[str, Any]


@dataclass(frozen=True)
class Summary:
    """An LLM-ready summary of the whole state."""

    version: int
    summary: str


@dataclass(frozen=True)
class StateSlice:
    """A slice: a sparse sub-document with the state's nesting, and its summary."""

    version: int
    slice: dict[str, Any]
    summary: str
    total: int
    truncated: bool
    cached: bool
    slice_pattern: str

    @property
    def tasks(self) -> dict[str, Any]:
        return self.slice.get("tasks") or {}

    @property
    def metrics(self) -> dict[str, Any]:
        return self.slice.get("metrics") or {}

    @property
    def resources(self) -> dict[str, Any]:
        return self.slice.get("resources") or {}

    @property
    def agents(self) -> dict[str, Any]:
        return self.slice.get("agents_online") or {}


@dataclass(frozen=True)
class DeltaResult:
    """An applied delta; `duplicate` when its idempotency key was already applied (nothing new)."""

    success: bool
    version: int
    delta_id: str
    changed: list[str]
    duplicate: bool


def _build(cls: Any, body: dict[str, Any]) -> Any:
    """A result from a response body, ignoring fields this client does not know."""
    return cls(**{f.name: body[f.name] for f in fields(cls)})


def _segment(value: str) -> str:
    """An id as one path segment. `.` and `..` are encoded too, or URL normalisation would drop them."""
    if not value or "/" in value:
        raise ValueError(f'tenant and fsa ids must be non-empty and hold no "/": {value!r}')
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in {".", ".."} else encoded


def _state_path(tenant: str, fsa: str, suffix: str = "") -> str:
    return f"/state/{_segment(tenant)}/{_segment(fsa)}{suffix}"


def _error(response: httpx.Response) -> StateMemoryError:
    try:
        body = jsontext.decode(response.content) if response.content else None
    except msgspec.DecodeError:
        body = None
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or response.reason_phrase)
        problem_type = body.get("type")
    else:
        detail, problem_type = response.text[:200] or response.reason_phrase, None
    error = _ERRORS.get(response.status_code, StateMemoryError)
    if problem_type == "urn:sms:problem:policy-violation":
        error = PolicyViolationError
    return error(detail, status=response.status_code, type=problem_type, body=body)


def _backoff(attempt: int, response: httpx.Response | None = None) -> float:
    """Seconds before the next attempt: what Retry-After asks (capped), else capped exponential."""
    asked = response.headers.get("retry-after", "") if response is not None else ""
    if asked.isdigit():
        return min(BACKOFF_CAP * 5, float(asked))
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)


class StateMemoryClient:
    """The service's API as async methods. Use as `async with`, or call `aclose()` when done.

    `api_key` is sent as `Authorization: Bearer`; `transport` and `headers` are handed to httpx
    (a custom transport, more headers, …); `retries` is how many times a transient failure is
    retried after the first attempt.
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 10.0,
        retries: int = 3,
        transport: httpx.AsyncBaseTransport | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.retries = retries
        auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/"),
            timeout=timeout,
            transport=transport,
            headers={"user-agent": f"sms-client/{__version__}", **auth, **(headers or {})},
        )

    async def __aenter__(self) -> StateMemoryClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def get_state(self, tenant: str, fsa: str) -> State:
        """The whole state (`{}` at version 0 when never written)."""
        return _build(State, await self._request("GET", _state_path(tenant, fsa)))

    async def get_summary(self, tenant: str, fsa: str, max_tokens: int | None = None) -> Summary:
        """A summary of the whole state within `max_tokens` (the service's default when None)."""
        params = {"summary": "true", "max_tokens": max_tokens}
        return _build(Summary, await self._request("GET", _state_path(tenant, fsa), params=params))

    async def get_slice(
        self,
        tenant: str,
        fsa: str,
        pattern: str | list[str],
        k: int | None = None,
        order: str | None = None,
        where: str | None = None,
        max_tokens: int | None = None,
    ) -> StateSlice:
        """The entries matching `pattern` (one spec, comma-separated specs, or a list of them),
        at most `k` per spec by `order` ("key" or "recent"), filtered by the jsonpath predicate
        `where`, with their summary."""
        params = {
            "slice": [pattern] if isinstance(pattern, str) else list(pattern),
            "k": k,
            "order": order,
            "where": where,
            "max_tokens": max_tokens,
        }
        return _build(StateSlice, await self._request("GET", _state_path(tenant, fsa, "/slice"), params=params))

    async def get_aliases(self, tenant: str, fsa: str) -> dict[str, str]:
        """The aliases of the state's slice specs, {"task": "tasks", …}: the defaults and its own."""
        return (await self._request("GET", _state_path(tenant, fsa, "/aliases")))["aliases"]

    async def set_alias(self, tenant: str, fsa: str, alias: str, collection: str) -> dict[str, str]:
        """Makes `alias:pattern` in the state's slice specs read `collection`; the aliases after."""
        path = _state_path(tenant, fsa, f"/aliases/{_segment(alias)}")
        return (await self._request("PUT", path, content=jsontext.encode({"collection": collection})))["aliases"]

    async def remove_alias(self, tenant: str, fsa: str, alias: str) -> dict[str, str]:
        """Removes the state's own alias (a default one of that name applies again); the aliases after."""
        return (await self._request("DELETE", _state_path(tenant, fsa, f"/aliases/{_segment(alias)}")))["aliases"]

    async def apply_delta(
        self,
        tenant: str,
        fsa: str,
        delta: dict[str, Any],
        *,
        actor: str | None = None,
        lineage_id: str | None = None,
        delta_id: str | uuid.UUID | None = None,
        expected_version: int | None = None,
        meta: dict[str, str] | None = None,
    ) -> DeltaResult:
        """Apply a delta (DESIGN §4.1 wire format). `meta` are further query parameters kept with
        the delta (pillar, aml_level, …). Raises ConflictError when `expected_version` or a
        `$expect` does not hold."""
        return await self._write(
            _state_path(tenant, fsa, "/delta"), delta, actor, lineage_id, delta_id, expected_version, meta
        )

    async def replace_state(
        self,
        tenant: str,
        fsa: str,
        state: dict[str, Any],
        *,
        actor: str | None = None,
        lineage_id: str | None = None,
        delta_id: str | uuid.UUID | None = None,
        expected_version: int | None = None,
        meta: dict[str, str] | None = None,
    ) -> DeltaResult:
        """Create or replace the whole state, logged as one delta."""
        return await self._write(_state_path(tenant, fsa), state, actor, lineage_id, delta_id, expected_version, meta)

    async def validate_delta(
        self, delta: dict[str, Any], tenant: str | None = None, fsa: str | None = None
    ) -> dict[str, Any]:
        """Check a delta without applying it. Alone: its shape (`valid`, the normalised `ops` and
        `expect`). With tenant and fsa: a rolled-back dry run (`version` it would get, `changed`,
        `current_version`), raising the ConflictError or ValidationError it would meet."""
        params = {"tenant_id": tenant, "fsa_id": fsa}
        return await self._request("POST", "/validate/delta", params=params, content=jsontext.encode(delta))

    async def get_policies(self, tenant: str, fsa: str | None = None) -> dict[str, Any]:
        """A state's rules and the tenant's defaults ({"rules", "defaults"}), or with no fsa the
        tenant's defaults ({"rules"}). Needs an admin key."""
        path = _state_path(tenant, fsa, "/policies") if fsa is not None else f"/tenants/{_segment(tenant)}/policies"
        return await self._request("GET", path)

    async def set_policies(self, tenant: str, fsa: str | None, rules: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace a state's rules (fsa None: the tenant's defaults); the rules after. Needs an admin key."""
        path = _state_path(tenant, fsa, "/policies") if fsa is not None else f"/tenants/{_segment(tenant)}/policies"
        return await self._request("PUT", path, content=jsontext.encode({"rules": rules}))

    async def create_key(
        self,
        tenants: list[str],
        scopes: list[str],
        *,
        actor: str | None = None,
        aml_level: int | None = None,
        expires_in: str | None = None,
        rate_limit: float | None = None,
        label: str | None = None,
    ) -> dict[str, Any]:
        """Make an API key (needs an admin key); the answer's `key` is the key itself, shown once."""
        given = {"tenants": tenants, "scopes": scopes, "actor": actor, "aml_level": aml_level}
        given |= {"expires_in": expires_in, "rate_limit": rate_limit, "label": label}
        body = {name: value for name, value in given.items() if value is not None}
        return await self._request("POST", "/keys", content=jsontext.encode(body))

    async def list_keys(self) -> list[dict[str, Any]]:
        """The keys this (admin) key may manage, without the keys themselves."""
        return (await self._request("GET", "/keys"))["keys"]

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke a key by its id (k_…)."""
        return await self._request("DELETE", f"/keys/{_segment(key_id)}")

    async def deltas(self, tenant: str, fsa: str, since: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """The delta log after version `since`, oldest first: all of it, or the first `limit` deltas."""
        collected: list[dict[str, Any]] = []
        path = _state_path(tenant, fsa, "/deltas")
        while limit is None or len(collected) < limit:
            size = DELTA_PAGE if limit is None else min(DELTA_PAGE, limit - len(collected))
            page = await self._request("GET", path, params={"since": since, "limit": size})
            collected.extend(page["deltas"])
            if not page["more"] or not page["deltas"]:
                break
            since = page["deltas"][-1]["version"]
        return collected

    async def subscribe(
        self, tenant: str, fsa: str | None = None, *, since: int | str | None = None, slice: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every change after `since` (a version; for a whole tenant, an event id "fsa:version"),
        oldest first, then live, from the SSE feed. Each change is a delta's metadata and ops
        with its version. A broken stream is resumed after the last change received, so nothing
        is missed or repeated."""
        path = _state_path(tenant, fsa, "/events") if fsa is not None else "/events"
        params = {"slice": slice} if fsa is not None else {"tenant": tenant, "slice": slice}
        params = {name: value for name, value in params.items() if value is not None}
        last = None if since is None else str(since)
        attempt = 0
        while True:
            headers = {"last-event-id": last} if last else {}
            try:
                # no read timeout: an idle feed only sends keep-alive comments
                timeout = httpx.Timeout(self._http.timeout.connect, read=None)
                async with self._http.stream("GET", path, params=params, headers=headers, timeout=timeout) as response:
                    if not response.is_success:
                        await response.aread()
                        raise _error(response)
                    attempt = 0
                    event_id, data = None, []
                    async for line in response.aiter_lines():
                        if line.startswith("id:"):
                            event_id = line[3:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif not line and data:
                            change = jsontext.decode("\n".join(data))
                            last, data = event_id or last, []
                            yield change
            except TRANSIENT_ERRORS as exc:
                if attempt >= self.retries:
                    raise ServiceUnavailableError(f"GET {path}: {type(exc).__name__} on each attempt") from exc
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def build_context(
        self, tenant: str, fsa: str, patterns: list[str], k: int | None = None, max_tokens: int | None = None
    ) -> str:
        """One prompt block: the summaries of several slices under a heading naming the state and
        its version (the newest of the slices read)."""
        slices = await asyncio.gather(
            *(self.get_slice(tenant, fsa, pattern, k=k, max_tokens=max_tokens) for pattern in patterns)
        )
        version = max((view.version for view in slices), default=0)
        blocks = [f"## Shared state {tenant}/{fsa} (version {version})"]
        blocks += [f"### {view.slice_pattern}\n{view.summary}" for view in slices]
        return "\n\n".join(blocks)

    async def _write(
        self,
        path: str,
        body: dict[str, Any],
        actor: str | None,
        lineage_id: str | None,
        delta_id: str | uuid.UUID | None,
        expected_version: int | None,
        meta: dict[str, str] | None,
    ) -> DeltaResult:
        headers = {"idempotency-key": str(delta_id or uuid.uuid4())}
        if expected_version is not None:
            headers["if-match"] = f'"{expected_version}"'
        params = {**(meta or {}), "actor": actor, "lineage_id": lineage_id}
        content = jsontext.encode(body)
        return _build(DeltaResult, await self._request("POST", path, params=params, content=content, headers=headers))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer; transient failures are retried, errors raised as exceptions."""
        params = {name: value for name, value in (params or {}).items() if value is not None}
        if content is not None:
            headers = {"content-type": "application/json", **(headers or {})}
        attempt = 0
        while True:
            response = None
            try:
                response = await self._http.request(method, path, params=params, content=content, headers=headers)
            except TRANSIENT_ERRORS as exc:
                if attempt >= self.retries:
                    raise ServiceUnavailableError(
                        f"{method} {path}: {type(exc).__name__} on each of {attempt + 1} attempts"
                    ) from exc
            else:
                if response.status_code not in RETRY_STATUSES or attempt >= self.retries:
                    break
            await asyncio.sleep(_backoff(attempt, response))
            attempt += 1
        if not response.is_success:
            raise _error(response)
        try:
            return jsontext.decode(response.content)
        except msgspec.DecodeError as exc:
            raise StateMemoryError("the answer is not JSON", status=response.status_code) from exc


class SyncStateMemoryClient:
    """StateMemoryClient for code without an event loop: the same methods, blocking.

    Calls run on a private event loop, so don't use it inside a running loop. Use as `with`,
    or call `close()` when done.
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._runner = asyncio.Runner()
        self._client = StateMemoryClient(base_url, **options)

    def __getattr__(self, name: str) -> Any:
        method = None if name.startswith("_") else getattr(self._client, name, None)
        if not inspect.iscoroutinefunction(method):
            raise AttributeError(name)

        @functools.wraps(method)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(method(*args, **kwargs))

        return blocking

    def __enter__(self) -> SyncStateMemoryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._runner.run(self._client.aclose())
        self._runner.close()
