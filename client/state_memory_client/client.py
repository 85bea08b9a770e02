"""Async Python client for the State Memory Service (DESIGN §8): a method for every route.

    async with StateMemoryClient("http://127.0.0.1:8080") as sms:
        view = await sms.get_slice("acme", "launch", "task:DESIGN_*", k=5)
        await sms.apply_delta("acme", "launch", {"tasks.DESIGN_001.status": "DONE"}, actor="DesignBot")

Transient failures (connection errors, timeouts, 502/503/504, and 429 after its Retry-After) are
retried with capped exponential backoff and jitter. Writes to a state carry an idempotency key
(generated when none is given), reused on every retry, so a write answered 503 — which may have
been applied before the connection was lost — applies exactly once. The writes that take no key
(a task comment, a new API key, a purge, a compaction) are retried only when they certainly never
reached the service. Reads that take `min_version` (the version a write answered) never answer
from an older version of the state, even when a lagging read replica serves them. Numbers are
exact both ways (decimals are `Decimal`), or with `numbers="float"` plain int and float that
`json.dumps` takes. Errors are typed exceptions built from the service's problem+json; a call
never returns None. `SyncStateMemoryClient` is the blocking form.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import inspect
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from state_memory_client import __version__, jsontext

RETRY_STATUSES = frozenset({429, 502, 503, 504})
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Failures after which the request certainly never reached the service, or was refused unread
NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
NOT_SENT_STATUSES = frozenset({429})
BACKOFF_BASE = 0.1  # seconds before the first retry; doubled on each next one
BACKOFF_CAP = 2.0
DELTA_PAGE = 1000  # the service's largest page of the delta log
STATE_PAGE = 1000  # the service's largest page of a tenant's states


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
    """404: no such route, version, task, key, or a tenant the key does not name."""


class HistoryCompactedError(NotFoundError):
    """404: the version asked for (or the log after it) was compacted away; the state's history
    now starts at `history_from`."""

    @property
    def history_from(self) -> int | None:
        return self.body.get("history_from") if isinstance(self.body, dict) else None


class PayloadTooLargeError(StateMemoryError):
    """413: a body, value or count is over the service's limits."""


class ServiceUnavailableError(StateMemoryError):
    """The service stayed unavailable (502/503/504 or no connection) through every retry."""


class StatePurgedError(StateMemoryError):
    """The state a subscription followed was purged (by an admin, or its TTL ran out): what it
    delivered is gone and the subscription has ended (there is nothing to resume). `data` is the
    service's notice: {"status": "purged", "tenant_id", "fsa_id", "last_event_id"}."""

    def __init__(self, tenant: str, fsa: str | None, data: Any) -> None:
        super().__init__(f"{tenant}/{fsa} was purged", body=data)
        self.tenant = tenant
        self.fsa = fsa

    @property
    def data(self) -> Any:
        return self.body


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
# problem types with an error class more precise than their status's
_PROBLEM_TYPES: dict[str, type[StateMemoryError]] = {
    "urn:sms:problem:policy-violation": PolicyViolationError,
    "urn:sms:problem:history-compacted": HistoryCompactedError,
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


@dataclass(frozen=True)
class StateInfo:
    """One state of a tenant: its version, how many entries and bytes it holds, and when it was
    created and last changed (ISO 8601 text, as the service sends it)."""

    fsa_id: str
    version: int
    entries: int
    size_bytes: int
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class StatePage:
    """A page of a tenant's states in id order; `next` is the `after` of the next page (None on the last)."""

    states: list[StateInfo]
    next: str | None


def _build(cls: Any, body: dict[str, Any]) -> Any:
    """A result from a response body, ignoring fields this client does not know."""
    return cls(**{f.name: body[f.name] for f in fields(cls)})


def _segment(value: str) -> str:
    """An id as one path segment. `.` and `..` are encoded too, or URL normalisation would drop them."""
    if not value or "/" in value:
        raise ValueError(f'ids must be non-empty and hold no "/": {value!r}')
    encoded = quote(value, safe="")
    return encoded.replace(".", "%2E") if encoded in {".", ".."} else encoded


def _state_path(tenant: str, fsa: str, suffix: str = "") -> str:
    return f"/state/{_segment(tenant)}/{_segment(fsa)}{suffix}"


def _tenant_policies_path(tenant: str) -> str:
    return f"/tenants/{_segment(tenant)}/policies"


def _problem(status: int, body: Any, fallback: str) -> StateMemoryError:
    """The typed exception of a problem+json body (or of a status alone, when the body is none)."""
    if isinstance(body, dict):
        detail = str(body.get("detail") or body.get("title") or fallback)
        problem_type = body.get("type") if isinstance(body.get("type"), str) else None
    else:
        detail, problem_type = fallback, None
    error = _PROBLEM_TYPES.get(problem_type) or _ERRORS.get(status, StateMemoryError)
    return error(detail, status=status, type=problem_type, body=body)


def _error(response: httpx.Response, decode: Callable[[bytes], Any]) -> StateMemoryError:
    try:
        body = decode(response.content) if response.content else None
    except msgspec.DecodeError:
        body = None
    return _problem(response.status_code, body, response.text[:200] or response.reason_phrase)


def _backoff(attempt: int, response: httpx.Response | None = None) -> float:
    """Seconds before the next attempt: what Retry-After asks (capped), else capped exponential."""
    asked = response.headers.get("retry-after", "") if response is not None else ""
    if asked.isdigit():
        return min(BACKOFF_CAP * 5, float(asked))
    return min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt) * random.uniform(0.5, 1.0)


def _duration(seconds: int) -> str:
    """Whole seconds as the service writes a duration, in the largest unit that divides them
    (its numbers have at most 6 digits: 2592000 seconds is "30d")."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _given(**params: Any) -> dict[str, Any]:
    """The parameters that were given (None means left out)."""
    return {name: value for name, value in params.items() if value is not None}


class StateMemoryClient:
    """The service's API as async methods. Use as `async with`, or call `aclose()` when done.

    `api_key` is sent as `Authorization: Bearer`; `transport` and `headers` are handed to httpx
    (a custom transport, more headers, …); `retries` is how many times a transient failure is
    retried after the first attempt. `numbers="decimal"` (the default) reads decimals as exact
    `Decimal`; `numbers="float"` reads them as float, so that every answer can go to `json.dumps`
    as it is (integers are int either way).
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
        numbers: str = "decimal",
    ) -> None:
        if numbers not in jsontext.DECODERS:
            raise ValueError(f"numbers is one of {', '.join(jsontext.DECODERS)}, not {numbers!r}")
        self.retries = retries
        self._decode = jsontext.DECODERS[numbers]
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

    # ---------------------------------------------------------------- reading a state

    async def get_state(
        self, tenant: str, fsa: str, at_version: int | None = None, *, min_version: int | None = None
    ) -> State:
        """The whole state (`{}` at version 0 when never written), or exactly as it was at
        `at_version` (NotFoundError for a version it never had, HistoryCompactedError for one
        compacted away). With `min_version`, never an older version than that."""
        params = {"version": at_version, "min_version": min_version}
        return _build(State, await self._request("GET", _state_path(tenant, fsa), params=params))

    async def get_summary(
        self, tenant: str, fsa: str, max_tokens: int | None = None, *, min_version: int | None = None
    ) -> Summary:
        """A summary of the whole state within `max_tokens` (the service's default when None), of
        version `min_version` or a newer one when given."""
        params = {"summary": "true", "max_tokens": max_tokens, "min_version": min_version}
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
        *,
        min_version: int | None = None,
    ) -> StateSlice:
        """The entries matching `pattern` (one spec, comma-separated specs, or a list of them),
        at most `k` per spec by `order` ("key" or "recent"), filtered by the jsonpath predicate
        `where`, with their summary; of version `min_version` or a newer one when given."""
        params = {
            "slice": [pattern] if isinstance(pattern, str) else list(pattern),
            "k": k,
            "order": order,
            "where": where,
            "max_tokens": max_tokens,
            "min_version": min_version,
        }
        return _build(StateSlice, await self._request("GET", _state_path(tenant, fsa, "/slice"), params=params))

    async def build_context(
        self,
        tenant: str,
        fsa: str,
        patterns: list[str],
        k: int | None = None,
        max_tokens: int | None = None,
        *,
        min_version: int | None = None,
    ) -> str:
        """One prompt block: the summaries of several slices under a heading naming the state and
        its version (the newest of the slices read; each of `min_version` or newer when given)."""
        slices = await asyncio.gather(
            *(
                self.get_slice(tenant, fsa, pattern, k=k, max_tokens=max_tokens, min_version=min_version)
                for pattern in patterns
            )
        )
        version = max((view.version for view in slices), default=0)
        blocks = [f"## Shared state {tenant}/{fsa} (version {version})"]
        blocks += [f"### {view.slice_pattern}\n{view.summary}" for view in slices]
        return "\n\n".join(blocks)

    async def list_states(
        self, tenant: str, *, prefix: str | None = None, after: str | None = None, limit: int | None = None
    ) -> StatePage:
        """A page of the tenant's states in id order: those whose id starts with `prefix`, after
        the id `after` (the previous page's `next`), at most `limit` (the service's default 100,
        at most 1000)."""
        params = {"prefix": prefix, "after": after, "limit": limit}
        body = await self._request("GET", f"/state/{_segment(tenant)}", params=params)
        return StatePage([_build(StateInfo, state) for state in body["states"]], body["next"])

    async def iter_states(self, tenant: str, *, prefix: str | None = None) -> AsyncIterator[StateInfo]:
        """Every state of the tenant (whose id starts with `prefix`) in id order, page after page."""
        after = None
        while True:
            page = await self.list_states(tenant, prefix=prefix, after=after, limit=STATE_PAGE)
            for state in page.states:
                yield state
            if page.next is None:
                return
            after = page.next

    # ---------------------------------------------------------------- writing a state

    async def apply_delta(
        self,
        tenant: str,
        fsa: str,
        delta: dict[str, Any] | list[dict[str, Any]],
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

    async def apply_deltas(
        self, tenant: str, fsa: str, writes: list[dict[str, Any]], *, atomic: bool = False
    ) -> list[DeltaResult | StateMemoryError]:
        """Apply a batch of writes in one transaction, in order; each is {"delta": {...}} with its
        own "actor", "lineage_id", "delta_id", "expected_version", "meta" if wanted. The results
        come in the same order: a DeltaResult, or — the write was refused alone — the typed error
        it met (not raised). With `atomic` it is all or nothing: the failing write's error is
        raised (its body names the `index`), and nothing is applied. Writes without a delta_id
        get one, so a retried batch applies once."""
        batch = [{**write, "delta_id": str(write.get("delta_id") or uuid.uuid4())} for write in writes]
        path = _state_path(tenant, fsa, "/deltas")
        params = {"atomic": "true"} if atomic else None
        body = await self._request("POST", path, params=params, content=jsontext.encode(batch))
        return [
            _build(DeltaResult, result)
            if result.get("success") is True
            else _problem(result["status"], result, "the write was refused")
            for result in body["results"]
        ]

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
        """Create or replace the whole state, logged as one delta. Needs an admin key."""
        return await self._write(_state_path(tenant, fsa), state, actor, lineage_id, delta_id, expected_version, meta)

    async def rollback(
        self,
        tenant: str,
        fsa: str,
        to_version: int,
        *,
        actor: str | None = None,
        lineage_id: str | None = None,
        delta_id: str | uuid.UUID | None = None,
        expected_version: int | None = None,
        meta: dict[str, str] | None = None,
    ) -> DeltaResult:
        """Restore the content the state had at `to_version`, as a new logged delta (the log stays
        append-only; policies hold for it). Needs an admin key."""
        meta = {**(meta or {}), "to_version": str(to_version)}  # a query parameter, as the metadata are
        path = _state_path(tenant, fsa, "/rollback")
        return await self._write(path, None, actor, lineage_id, delta_id, expected_version, meta)

    async def validate_delta(
        self, delta: dict[str, Any], tenant: str | None = None, fsa: str | None = None
    ) -> dict[str, Any]:
        """Check a delta without applying it. Alone: its shape (`valid`, the normalised `ops` and
        `expect`). With tenant and fsa: a rolled-back dry run (`version` it would get, `changed`,
        `current_version`), raising the ConflictError or ValidationError it would meet."""
        params = {"tenant_id": tenant, "fsa_id": fsa}
        return await self._request("POST", "/validate/delta", params=params, content=jsontext.encode(delta))

    async def heartbeat(
        self,
        tenant: str,
        fsa: str,
        agent: str,
        *,
        lineage_id: str | None = None,
        meta: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Record `agents_online.{agent}` as seen now (agent names may contain "/"), as a delta
        written by the agent (or by the actor the API key names): {"success", "agent",
        "timestamp", "version", "delta_id", "changed", "duplicate"}."""
        if not agent or any(part in ("", ".", "..") for part in agent.split("/")):
            raise ValueError(f'an agent name is "/"-separated parts, none empty, "." or "..": {agent!r}')
        agent_path = "/".join(quote(part, safe="") for part in agent.split("/"))
        path = f"/agents/{_segment(tenant)}/{_segment(fsa)}/{agent_path}/heartbeat"
        # a repeat only records the agent as seen again, so retries are safe without a key
        return await self._request("POST", path, params={**(meta or {}), "lineage_id": lineage_id})

    async def comment_on_task(
        self,
        tenant: str,
        fsa: str,
        task: str,
        body: str,
        *,
        actor: str | None = None,
        is_blocker: bool = False,
        lineage_id: str | None = None,
    ) -> dict[str, Any]:
        """Comment on `tasks.{task}` (NotFoundError when the task does not exist) with a markdown
        `body`, written by `actor` (the API key's actor when it names one; one of the two is
        needed); `is_blocker` flags it as blocking the task. The comment as stored:
        {"success", "comment_id", "author", "body_md", "is_blocker", "created_at", …}."""
        comment = _given(author=actor, body=body, is_blocker=is_blocker, lineage_id=lineage_id)
        path = f"/tasks/{_segment(tenant)}/{_segment(fsa)}/{_segment(task)}/comment"
        return await self._request("POST", path, content=jsontext.encode(comment), replayable=False)

    # ---------------------------------------------------------------- a state's lifecycle

    async def purge_state(self, tenant: str, fsa: str, *, actor: str | None = None) -> dict[str, Any]:
        """Erase the state when a person asks: its entries, log, history, comments, summaries,
        aliases, policies and TTL. It then reads as never written (version 0), and its
        subscriptions end with StatePurgedError. The answer is the erasure's record, kept after
        the state: {"erasure_id", "action": "purge", "actor" (the key's, else `actor`), "key_id",
        "erased_at", "last_version", "removed": rows removed per table, …}. Needs an admin key.
        Retried only when it certainly never reached the service (a repeat would be recorded as a
        second erasure): after a lost answer it raises ServiceUnavailableError, and `erasures`
        tells whether it was done; purging again is harmless."""
        return await self._request("DELETE", _state_path(tenant, fsa), params={"actor": actor}, replayable=False)

    async def compact(self, tenant: str, fsa: str, before_version: int, *, actor: str | None = None) -> dict[str, Any]:
        """Drop the state's log and history before a snapshot at `before_version` (1 up to the
        current version). The state from that version on reads as before; an older version, or
        the log after one, is then a HistoryCompactedError. The answer is the erasure's record
        ("action": "compact", "through_version": before_version, …). Needs an admin key; retried
        as `purge_state` is, for the same reason."""
        path = _state_path(tenant, fsa, "/compact")
        params = {"before_version": before_version, "actor": actor}
        return await self._request("POST", path, params=params, replayable=False)

    async def erasures(self, tenant: str, fsa: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """The records of the state's purges and compactions, newest first (the last `limit`,
        default 100): who asked, when, the version then and the rows removed. Needs an admin key."""
        return (await self._request("GET", _state_path(tenant, fsa, "/erasures"), params={"limit": limit}))["erasures"]

    async def get_ttl(self, tenant: str, fsa: str) -> dict[str, Any]:
        """The state's TTL: {"expires_after_seconds", "last_write_at", "expires_at"} (nulls when it
        has none; no last write when it was never written)."""
        return await self._request("GET", _state_path(tenant, fsa, "/ttl"))

    async def set_ttl(self, tenant: str, fsa: str, expires_after: str | int | None) -> dict[str, Any]:
        """Purge the state once it goes `expires_after` without a delta: "7d" (s, m, h, d or w) or
        whole seconds; None clears it. For per-run scratch states. The TTL after, as `get_ttl`.
        Needs an admin key."""
        given = _duration(expires_after) if isinstance(expires_after, int) else expires_after
        path = _state_path(tenant, fsa, "/ttl")
        return await self._request("PUT", path, content=jsontext.encode({"expires_after": given}))

    async def clear_ttl(self, tenant: str, fsa: str) -> dict[str, Any]:
        """Clear the state's TTL: it is kept until purged. The TTL after, as `get_ttl`. Needs an admin key."""
        return await self._request("DELETE", _state_path(tenant, fsa, "/ttl"))

    # ---------------------------------------------------------------- history and lineage

    async def deltas(
        self, tenant: str, fsa: str, since: int = 0, limit: int | None = None, *, min_version: int | None = None
    ) -> list[dict[str, Any]]:
        """The delta log after version `since`, oldest first: all of it, or the first `limit` deltas;
        up to version `min_version` at least, when given. HistoryCompactedError when `since` is
        before the state's compaction (0 reads the whole kept log)."""
        collected: list[dict[str, Any]] = []
        path = _state_path(tenant, fsa, "/deltas")
        while limit is None or len(collected) < limit:
            size = DELTA_PAGE if limit is None else min(DELTA_PAGE, limit - len(collected))
            params = {"since": since, "limit": size, "min_version": min_version}
            page = await self._request("GET", path, params=params)
            collected.extend(page["deltas"])
            if not page["more"] or not page["deltas"]:
                break
            since = page["deltas"][-1]["version"]
        return collected

    async def changes_since(
        self,
        tenant: str,
        fsa: str,
        version: int,
        *,
        slice: str | None = None,
        max_tokens: int | None = None,
        min_version: int | None = None,
    ) -> dict[str, Any]:
        """What changed after `version` (touching `slice`, when given): {"digest": LLM-ready text
        within `max_tokens`, "changes": each changed path once with its old and new value,
        "version", "deltas", "actors", "lineages", …}; up to version `min_version` at least, when
        given."""
        params = {"since": version, "slice": slice, "max_tokens": max_tokens, "min_version": min_version}
        return await self._request("GET", _state_path(tenant, fsa, "/changes"), params=params)

    async def history(
        self, tenant: str, fsa: str, path: str, *, limit: int | None = None, min_version: int | None = None
    ) -> list[dict[str, Any]]:
        """Who changed the dotted `path`, when, from what to what, newest first: each {"version",
        "actor", "lineage_id", "created_at", "old", "new"} (`old`/`new` are left out where the path
        did not exist before / does not exist after); the last `limit` changes (default 100), up to
        version `min_version` at least, when given."""
        params = {"path": path, "limit": limit, "min_version": min_version}
        return (await self._request("GET", _state_path(tenant, fsa, "/history"), params=params))["changes"]

    async def diff(self, tenant: str, fsa: str, from_version: int, to_version: int | None = None) -> dict[str, Any]:
        """The RFC 6902 JSON Patch from the state at `from_version` to the state at `to_version`
        (default: the current one): {"from", "to", "patch"}."""
        params = {"from": from_version, "to": to_version}
        return await self._request("GET", _state_path(tenant, fsa, "/diff"), params=params)

    async def lineage(self, lineage_id: str, *, tenant: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The deltas of a lineage (span) across the tenant's states, in time order, each with its
        fsa_id, version, actor, ops and paths; the first `limit` (default 1000)."""
        params = {"tenant_id": tenant, "limit": limit}
        return (await self._request("GET", f"/lineage/{_segment(lineage_id)}", params=params))["deltas"]

    async def get_comments(self, tenant: str, fsa: str, task: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """A task's comments, newest first (the last `limit`, default 50)."""
        path = f"/tasks/{_segment(tenant)}/{_segment(fsa)}/{_segment(task)}/comments"
        return (await self._request("GET", path, params={"limit": limit}))["comments"]

    # ---------------------------------------------------------------- the change feed

    async def subscribe(
        self, tenant: str, fsa: str | None = None, *, since: int | str | None = None, slice: str | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        """Every change after `since`, oldest first, then live, from the SSE feed: of one state,
        or with no fsa of every state of the tenant (then `since` is an event id "fsa:version").
        Only changes touching `slice`, when given. Each change is a delta's metadata and ops with
        its fsa_id and version. A broken stream (or one the service ends as it shuts down) is
        resumed after the last change received, so nothing is missed or repeated. When the state
        is purged, the iteration ends raising StatePurgedError; HistoryCompactedError when `since`
        is before the state's compaction."""
        path = _state_path(tenant, fsa, "/events") if fsa is not None else "/events"
        params = _given(slice=slice) if fsa is not None else _given(tenant=tenant, slice=slice)
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
                        raise _error(response, self._decode)
                    attempt = 0
                    event_id, event, data = None, None, []
                    async for line in response.aiter_lines():
                        if line.startswith("id:"):
                            event_id = line[3:].strip()
                        elif line.startswith("event:"):
                            event = line[6:].strip()
                        elif line.startswith("data:"):
                            data.append(line[5:].strip())
                        elif not line:
                            # the `shutdown` event only says the stream ends; the loop resumes it
                            if event == "change" and data:
                                change = self._decode("\n".join(data))
                                last = event_id or last
                                yield change
                            elif event == "purged":  # its versions start again from 0: no resuming
                                raise StatePurgedError(tenant, fsa, self._decode("\n".join(data)) if data else None)
                            event, data = None, []
            except TRANSIENT_ERRORS as exc:
                if attempt >= self.retries:
                    raise ServiceUnavailableError(f"GET {path}: {type(exc).__name__} on each attempt") from exc
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    # ---------------------------------------------------------------- configuration and service

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

    async def get_policies(self, tenant: str, fsa: str | None = None) -> dict[str, Any]:
        """A state's rules and the tenant's defaults ({"rules", "defaults"}), or with no fsa the
        tenant's defaults ({"rules"}). Needs an admin key."""
        path = _state_path(tenant, fsa, "/policies") if fsa is not None else _tenant_policies_path(tenant)
        return await self._request("GET", path)

    async def set_policies(self, tenant: str, fsa: str | None, rules: list[dict[str, Any]]) -> dict[str, Any]:
        """Replace a state's rules (fsa None: the tenant's defaults); the rules after. Needs an admin key."""
        path = _state_path(tenant, fsa, "/policies") if fsa is not None else _tenant_policies_path(tenant)
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
        body = _given(tenants=tenants, scopes=scopes, actor=actor, aml_level=aml_level)
        body |= _given(expires_in=expires_in, rate_limit=rate_limit, label=label)
        return await self._request("POST", "/keys", content=jsontext.encode(body), replayable=False)

    async def list_keys(self) -> list[dict[str, Any]]:
        """The keys this (admin) key may manage, without the keys themselves."""
        return (await self._request("GET", "/keys"))["keys"]

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        """Revoke a key by its id (k_…)."""
        return await self._request("DELETE", f"/keys/{_segment(key_id)}")

    async def health(self) -> dict[str, Any]:
        """{"status": "ok", "database": "ok", "postgres": its version}; ServiceUnavailableError
        when the service or its database stays down through every retry."""
        return await self._request("GET", "/health")

    async def health_live(self) -> dict[str, Any]:
        """{"status": "ok"}: the service's process answers (it asks nothing of the database)."""
        return await self._request("GET", "/health/live")

    async def health_ready(self) -> dict[str, Any]:
        """{"status": "ready", "schema_revision"}: the service may be sent requests (its database
        answers and is migrated, and it is not shutting down). When it is not, a 503 not-ready,
        retried like any 503, and then raised as ServiceUnavailableError with `type`
        "urn:sms:problem:not-ready" and a `detail` saying why (`retries=0` asks once)."""
        return await self._request("GET", "/health/ready")

    async def metrics(self) -> str:
        """The service's metrics in Prometheus's text format. Needs an admin key (unless the
        service makes them public)."""
        return (await self._send("GET", "/metrics")).text

    # ---------------------------------------------------------------- requests

    async def _write(
        self,
        path: str,
        body: Any,
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
        content = None if body is None else jsontext.encode(body)
        return _build(DeltaResult, await self._request("POST", path, params=params, content=content, headers=headers))

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        replayable: bool = True,
    ) -> Any:
        """The decoded JSON answer of `_send`."""
        response = await self._send(
            method, path, params=params, content=content, headers=headers, replayable=replayable
        )
        try:
            return self._decode(response.content)
        except msgspec.DecodeError as exc:
            raise StateMemoryError("the answer is not JSON", status=response.status_code) from exc

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        replayable: bool = True,
    ) -> httpx.Response:
        """The successful answer; transient failures are retried, errors raised as exceptions.
        A request that is not `replayable` (a write without an idempotency key) is retried only
        after failures that prove the service never acted on it."""
        params = _given(**(params or {}))
        if content is not None:
            headers = {"content-type": "application/json", **(headers or {})}
        retried_errors = TRANSIENT_ERRORS if replayable else NOT_SENT_ERRORS
        retried_statuses = RETRY_STATUSES if replayable else NOT_SENT_STATUSES
        attempt = 0
        while True:
            response = None
            try:
                response = await self._http.request(method, path, params=params, content=content, headers=headers)
            except TRANSIENT_ERRORS as exc:
                if attempt >= self.retries or not isinstance(exc, retried_errors):
                    raise ServiceUnavailableError(
                        f"{method} {path}: {type(exc).__name__} on each of {attempt + 1} attempts"
                    ) from exc
            else:
                if response.status_code not in retried_statuses or attempt >= self.retries:
                    break
            await asyncio.sleep(_backoff(attempt, response))
            attempt += 1
        if not response.is_success:
            raise _error(response, self._decode)
        return response


_END = object()  # what an iterator step returns when the iterator is exhausted


class SyncStateMemoryClient:
    """StateMemoryClient for code without an event loop: the same methods, blocking, and the same
    options (`numbers="float"`, …). `subscribe` and `iter_states` are blocking iterators; leaving
    the loop over one (break, an exception) closes its stream.

    The calls run on the client's own event loop in a thread of its own, so it works inside a
    running loop too (a notebook), blocking it while it waits, and from several threads at once.
    Use as `with`, or call `close()` when done; closing ends the iterators still open, even ones
    another thread is waiting on (their loops simply end).
    """

    def __init__(self, base_url: str, **options: Any) -> None:
        self._client = StateMemoryClient(base_url, **options)
        self._closed = False
        self._loop = asyncio.new_event_loop()
        # touched on the loop's thread only: iterators that were started, and their steps under way
        self._iterators: set[AsyncIterator[Any]] = set()
        self._steps: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="state-memory-client", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        method = None if name.startswith("_") or name == "aclose" else getattr(self._client, name, None)
        if inspect.isasyncgenfunction(method):

            @functools.wraps(method)
            def iterate(*args: Any, **kwargs: Any) -> Iterator[Any]:
                return self._iterate(method, args, kwargs)

            return iterate
        if inspect.iscoroutinefunction(method):

            @functools.wraps(method)
            def blocking(*args: Any, **kwargs: Any) -> Any:
                return self._run(method(*args, **kwargs))

            return blocking
        raise AttributeError(name)

    def __enter__(self) -> SyncStateMemoryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """End the open iterators, close the connections and stop the client's thread."""
        if self._closed:
            return
        self._closed = True
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def _run(self, call: Coroutine[Any, Any, Any]) -> Any:
        if self._closed:
            call.close()
            raise StateMemoryError("the client is closed")
        return asyncio.run_coroutine_threadsafe(call, self._loop).result()

    def _iterate(self, method: Callable[..., AsyncIterator[Any]], args: tuple, kwargs: dict[str, Any]) -> Iterator[Any]:
        iterator = method(*args, **kwargs)
        try:
            while not self._closed:
                try:
                    item = self._run(self._step(iterator))
                except concurrent.futures.CancelledError:
                    return  # the client was closed while this step waited
                if item is _END:
                    return
                yield item
        finally:
            if not self._closed:
                self._run(self._end(iterator))

    async def _step(self, iterator: AsyncIterator[Any]) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self._iterators.add(iterator)
        self._steps.add(task)
        try:
            return await anext(iterator, _END)
        finally:
            self._steps.discard(task)

    async def _end(self, iterator: AsyncIterator[Any]) -> None:
        self._iterators.discard(iterator)
        await iterator.aclose()

    async def _shutdown(self) -> None:
        steps = list(self._steps)
        for step in steps:
            step.cancel()
        await asyncio.gather(*steps, return_exceptions=True)
        for iterator in list(self._iterators):
            await self._end(iterator)
        await self._client.aclose()
