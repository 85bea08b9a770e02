"""API keys over HTTP, for admin keys (DESIGN §10): make, list, revoke. A key made here names only
tenants of the key that makes it, may claim no higher AML level, and writes as its actor when it
names one; the key itself is in the answer once and nowhere else."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.datastructures import State
from litestar.params import PathParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED

from app.api.auth import ADMIN, forbidden
from app.api.routes import JSON, Db, caller, json_response
from app.api.schemas import WRITES, Answer, KeyRequest, documented
from app.domain import jsontext
from app.domain.delta import decode_body
from app.domain.keys import SCOPES, NewKey, Principal, highest_scope, parse_duration
from app.errors import malformed

NO_STORE = {"Cache-Control": "no-store"}


def _new_key(given: KeyRequest, maker: Principal) -> NewKey:
    """The key as `maker` may make it; a 403 for more than it holds itself."""
    if maker.tenants is not None and not set(given.tenants) <= maker.tenants:
        raise forbidden("forbidden", "Not allowed", "a key may only name tenants of the key that makes it")
    if maker.aml_level is not None and (given.aml_level is None or given.aml_level > maker.aml_level):
        raise forbidden("forbidden", "Not allowed", f"a key made by this one may claim AML {maker.aml_level} at most")
    if maker.actor is not None and given.actor not in (None, maker.actor):
        raise forbidden("forbidden", "Not allowed", f"a key made by this one writes as {maker.actor}")
    if given.aml_level is not None and not given.aml_level.is_integer():
        raise malformed(f"aml_level is a whole number, not {given.aml_level}")
    unknown = set(given.scopes) - set(SCOPES)
    if unknown:
        raise malformed(f"scopes are among {', '.join(SCOPES)}, not {', '.join(sorted(unknown))[:100]}")
    try:
        return NewKey.make(
            given.tenants,
            highest_scope(given.scopes),
            actor=maker.actor or given.actor,
            aml_level=int(given.aml_level) if given.aml_level is not None else None,
            expires_in=parse_duration(given.expires_in) if given.expires_in is not None else None,
            rate_limit=given.rate_limit,
            label=given.label,
        )
    except ValueError as exc:
        raise malformed(str(exc)) from None


@post(
    "/keys",
    status_code=HTTP_201_CREATED,
    opt=ADMIN,
    operation_class=documented(
        Answer("NewKeyRecord", "The key: `key` is shown this once"),
        status=HTTP_201_CREATED,
        body={JSON: "KeyRequest"},
        problems=(*WRITES, 422),
    ),
)
async def create_key(request: Request, db: Db, state: State) -> Response:
    """Make an API key. The answer holds the key itself, `key`, this once; the service keeps only
    its hash. 403 when it would name a tenant, an AML level or an actor the making key does not."""
    principal = caller(request)
    try:
        given = msgspec.convert(decode_body(await request.body(), state.settings.limits), KeyRequest)
    except msgspec.ValidationError as exc:
        raise malformed(f"send the key as {{'tenants': [...], 'scopes': [...], …}}: {exc}") from None
    key = _new_key(given, principal)
    acting = db.acting_for(principal.tenants if principal.tenants is not None else key.tenants)
    record = await acting.create_key(key)
    request.app.state.auth.forget()
    return json_response(jsontext.encode({"key": key.key, **record}), HTTP_201_CREATED, NO_STORE)


@get("/keys", opt=ADMIN, operation_class=documented(Answer("KeyList", "The keys this key may manage")))
async def list_keys(db: Db) -> Response:
    """The keys this key may manage (those naming only its tenants), oldest first, never the keys
    themselves."""
    return json_response(jsontext.encode({"keys": await db.list_keys()}), headers=NO_STORE)


@delete(
    "/keys/{key_id:str}",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(Answer("KeyRecord", "The key, revoked"), problems=WRITES),
)
async def revoke_key(
    request: Request, db: Db, key_id: Annotated[str, PathParameter(description="The key's id, k_…")]
) -> Response:
    """Revoke a key from now on (other processes of the service notice within SMS_KEY_CACHE_SECONDS);
    404 for a key this key may not manage."""
    record = await db.revoke_key(key_id)
    request.app.state.auth.forget()
    return json_response(jsontext.encode(record), headers=NO_STORE)


KEY_ROUTES = [create_key, list_keys, revoke_key]
