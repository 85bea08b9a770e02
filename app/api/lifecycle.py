"""A state's lifecycle over HTTP (DESIGN §14), for admin keys: erase a state (an audited purge,
the one way around the append-only log), give it a TTL of inactivity after which the service's
sweep purges it, and compact its log and history before a snapshot. Each erasure is recorded in
sms.erasures with the request's actor and API key: the record is the answer, and the state's
records can be read after it is gone. Reading a state's TTL needs a read key."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.params import QueryParameter
from litestar.status_codes import HTTP_200_OK

from app.api.auth import ADMIN, READ
from app.api.routes import JSON, Db, FsaId, TenantId, caller, check_ids, json_response
from app.api.schemas import COMMON, WRITES, Answer, ExpiryRequest, documented
from app.domain.delta import MAX_VERSION, claimed_actor, decode_body
from app.domain.keys import Principal, parse_duration
from app.errors import Problem, malformed
from app.settings import Settings

ERASED = Answer("Erasure", "What was erased, by whom and when: the record sms.erasures keeps")
EXPIRY = Answer("Expiry", "The state's TTL")


def _actor(request: Request, principal: Principal, settings: Settings) -> str | None:
    """Who asks: the key's actor, or the one the request names (`actor`, X-Actor)."""
    return principal.actor or claimed_actor(dict(request.query_params), dict(request.headers), settings.limits)


@delete(
    "/state/{tenant_id:str}/{fsa_id:str}",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(ERASED, problems=(*WRITES, 422)),
)
async def purge_state(request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """Erase the state when a person asks: its entries, log, history, snapshots, comments,
    summaries, aliases, policies and refusals, every row of it. The state then reads as never
    written (version 0), its change-feed streams end with a `purged` event, and the erasure is
    recorded (who, when, what, in counts), which is the answer. Nothing else gets around the
    append-only log."""
    principal = caller(request)
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    actor = _actor(request, principal, state.settings)
    return json_response(await db.purge_state(tenant_id, fsa_id, actor, principal.key_id))


@post(
    "/state/{tenant_id:str}/{fsa_id:str}/compact",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(ERASED, problems=(*WRITES, 422)),
)
async def compact(
    request: Request,
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    before_version: Annotated[
        int,
        QueryParameter(
            ge=1,
            le=MAX_VERSION,
            description="The version to keep the state from: the log and history before it are dropped",
        ),
    ],
) -> Response:
    """Drop the state's log and history older than a snapshot at `before_version` (taken now if
    there is none). The state at that version and later reads as before; an older version, or the
    log after one, is then a 404 history-compacted. `before_version` may not be beyond the current
    version (404) nor before an earlier compaction (404 history-compacted). Recorded like a
    purge; the record is the answer."""
    principal = caller(request)
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    actor = _actor(request, principal, state.settings)
    return json_response(await db.compact(tenant_id, fsa_id, before_version, actor, principal.key_id))


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/erasures",
    opt=ADMIN,
    operation_class=documented(Answer("ErasureList", "The state's erasure records"), problems=(*COMMON, 422)),
)
async def read_erasures(
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="At most this many records")] = 100,
) -> Response:
    """The records of the state's purges and compactions, newest first: who asked, when, the
    version then and the rows removed. They outlive the state they record."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return json_response(await db.erasures(tenant_id, fsa_id, limit))


@get("/state/{tenant_id:str}/{fsa_id:str}/ttl", opt=READ, operation_class=documented(EXPIRY, problems=(*COMMON, 422)))
async def read_expiry(db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """The state's TTL: how long it may go without a delta before it is purged, and when that is."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return json_response(await db.expiry(tenant_id, fsa_id))


@put(
    "/state/{tenant_id:str}/{fsa_id:str}/ttl",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(EXPIRY, body={JSON: "ExpiryRequest"}, problems=(*WRITES, 422)),
)
async def set_expiry(request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """Give the state a TTL of inactivity, {"expires_after": "7d"} (s, m, h, d or w), or clear it
    with null: once it goes that long without a delta, the service's sweep purges it (recorded
    with the actor "ttl"). For per-run scratch states; a state never written expires too."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    given = decode_body(await request.body(), state.settings.limits)
    try:
        text = msgspec.convert(given, ExpiryRequest).expires_after
    except msgspec.ValidationError as exc:
        raise malformed(f'send the TTL as {{"expires_after": "7d"}} (or null to clear it): {exc}') from None
    try:
        expires_after = None if text is None else parse_duration(text)
    except ValueError as exc:
        raise Problem(422, "invalid-value", "A value is invalid", str(exc), field="expires_after") from None
    return json_response(await db.set_expiry(tenant_id, fsa_id, expires_after))


@delete(
    "/state/{tenant_id:str}/{fsa_id:str}/ttl",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(EXPIRY, problems=(*WRITES, 422)),
)
async def clear_expiry(db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """Clear the state's TTL: it is kept until it is purged."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return json_response(await db.set_expiry(tenant_id, fsa_id, None))


LIFECYCLE_ROUTES = [purge_state, compact, read_erasures, read_expiry, set_expiry, clear_expiry]
