"""Server-Sent Events: the change feed over HTTP (DESIGN §7).

Each event is one delta: `id` is its version (`fsa:version` on the tenant feed), `data` its
metadata and ops as JSON. Resume with the Last-Event-ID header (browsers send it on reconnect) or
`since`; what was missed is replayed from the log first, then the stream goes live. Idle streams
get keep-alive comments. `slice=` keeps only changes that touch that slice.

When the service shuts down, every stream ends with one `shutdown` event: its `retry` field asks
the client to reconnect a few seconds later (to this service restarted, or to another replica),
and its data names the last event id sent, from which to resume. When its state is purged, a
state's stream ends with one `purged` event instead: there is nothing to resume.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from litestar import Request, get
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import QueryParameter
from litestar.response import Stream

from app.api.auth import READ
from app.api.routes import Db, FsaId, TenantId, check_ids
from app.api.schemas import COMMON, EVENT_STREAM, SLICE_SPEC, Answer, documented, header
from app.db.queries import Database
from app.domain import jsontext
from app.feed import Change, Feed, StatePurged

SliceFilter = Annotated[
    str | None,
    QueryParameter(
        name="slice",
        max_length=2000,
        description="Only changes that touch this slice spec",
        schema_extra={"pattern": SLICE_SPEC},
    ),
]
Since = Annotated[str | None, QueryParameter(description="Resume after this event id (Last-Event-ID wins)")]

STREAM = documented(
    Answer(
        {
            "type": "string",
            "description": "Server-Sent Events: `event: change` with `id` (the version, or fsa:version on the tenant "
            "feed) and `data` (the delta's metadata and ops as JSON); `: keep-alive` comments; a final `event: "
            "shutdown` when the service stops, or `event: purged` when the state is purged.",
        },
        "The change feed, until the client disconnects or the service stops",
        media_type=EVENT_STREAM,
    ),
    problems=(*COMMON, 422),
    parameters=[header("Last-Event-ID", {"type": "string"}, "Resume after this event id (wins over since)")],
)

SHUTDOWN_RETRY_MS = 5000  # how long a client waits before it reconnects after the shutdown event


async def _check_request(
    feed: Feed, db: Database, tenant_id: str, fsa_id: str | None, resume, slice_spec: str | None
) -> None:
    """Validate the position and the slice before the stream starts: a 400, not a broken stream."""
    await feed.position(tenant_id, fsa_id, resume, db)
    if slice_spec is not None:
        await db.parse_slice(slice_spec)


# Characters JSON may carry raw but that some line readers split lines at (Python's str.splitlines,
# which httpx's aiter_lines uses): escaped, so an event's data stays one line for every client.
_LINE_BREAKS = {"\u0085".encode(): b"\\u0085", "\u2028".encode(): b"\\u2028", "\u2029".encode(): b"\\u2029"}


def _sse_safe(data: bytes) -> bytes:
    for raw, escaped in _LINE_BREAKS.items():
        data = data.replace(raw, escaped)
    return data


def _event_id(change: Change, tenant_feed: bool) -> str:
    return f"{change.fsa_id}:{change.version}" if tenant_feed else str(change.version)


def _stream(events: AsyncIterator[bytes]) -> Stream:
    return Stream(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    feed: Feed, db: Database, state: State, tenant_id: str, fsa_id: str | None, since, slice_spec
) -> AsyncIterator[bytes]:
    pages = feed.subscribe_pages(
        tenant_id, fsa_id, since=since, slice_spec=slice_spec, idle_timeout=state.settings.keepalive_seconds, db=db
    )
    first = True
    last_event_id = str(since) if since else None
    try:
        async for page in pages:
            if first:
                yield b"retry: 2000\n\n"
                first = False
            if page is None:
                yield b": keep-alive\n\n"
                continue
            last_event_id = _event_id(page[-1], fsa_id is None)
            # a page at once: one write to the socket however many changes it holds, its bytes made
            # once for all the subscribers given the same page
            text = page.made.get("sse")
            if text is None:
                text = page.made["sse"] = b"".join(
                    b"id: %s\nevent: change\ndata: %s\n\n"
                    % (_event_id(change, fsa_id is None).encode(), _sse_safe(change.json))
                    for change in page
                )
            yield text
    except StatePurged:
        # the state is gone: no `retry`, no resuming (its versions start again from 0)
        notice = {"status": "purged", "tenant_id": tenant_id, "fsa_id": fsa_id, "last_event_id": last_event_id}
        yield b"event: purged\ndata: " + jsontext.encode(notice) + b"\n\n"
        return
    finally:
        await pages.aclose()
    # a subscription ends only when the feed is closed, at shutdown; no `id:` line, which would
    # change the id the client resumes from
    notice = {"status": "shutting down", "retry_ms": SHUTDOWN_RETRY_MS, "last_event_id": last_event_id}
    yield f"event: shutdown\nretry: {SHUTDOWN_RETRY_MS}\ndata: ".encode() + jsontext.encode(notice) + b"\n\n"


@get("/state/{tenant_id:str}/{fsa_id:str}/events", opt=READ, operation_class=STREAM)
async def state_events(
    request: Request,
    feed: NamedDependency[Feed],
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    since: Since = None,
    slice_spec: SliceFilter = None,
) -> Stream:
    """SSE feed of one state: every version after `since`, in order, then live."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    resume = request.headers.get("last-event-id") or since
    await _check_request(feed, db, tenant_id, fsa_id, resume, slice_spec)
    return _stream(_events(feed, db, state, tenant_id, fsa_id, resume, slice_spec))


@get("/events", opt=READ, operation_class=STREAM)
async def tenant_events(
    request: Request,
    feed: NamedDependency[Feed],
    db: Db,
    state: State,
    tenant: Annotated[str, QueryParameter(description="Tenant whose states to follow")],
    since: Since = None,
    slice_spec: SliceFilter = None,
) -> Stream:
    """SSE feed of every state of a tenant; event ids are `fsa:version`."""
    check_ids(state.settings, tenant=tenant)
    resume = request.headers.get("last-event-id") or since
    await _check_request(feed, db, tenant, None, resume, slice_spec)
    return _stream(_events(feed, db, state, tenant, None, resume, slice_spec))


EVENT_ROUTES = [state_events, tenant_events]
