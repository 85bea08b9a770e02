"""Policies over HTTP (DESIGN §10), for admin keys: a state's own rules, and the tenant's defaults
that hold for every state of the tenant on the paths the state has no rule for. The rules are
checked and stored by SQL (sms.set_policy), which logs each change in sms.policy_changes, and
enforced by the merge itself."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, get, put
from litestar.datastructures import State
from litestar.status_codes import HTTP_200_OK

from app.api.auth import ADMIN
from app.api.routes import JSON, Db, FsaId, TenantId, caller, check_ids, json_response
from app.api.schemas import COMMON, WRITES, Answer, documented
from app.domain import jsontext
from app.domain.delta import decode_body
from app.errors import malformed


class Rules(msgspec.Struct, forbid_unknown_fields=True):
    """A rule set: {"rules": [{"path": "resources.inventory.*", "min": 0}, …]}."""

    rules: list[dict[str, Any]]


def _rules(raw: bytes, state: State) -> list[dict[str, Any]]:
    given = decode_body(raw, state.settings.limits)
    try:
        return msgspec.convert(given, Rules).rules
    except msgspec.ValidationError as exc:
        raise malformed(f'send the rules as {{"rules": [{{"path": …, "min": …}}, …]}}: {exc}') from None


STATE_RULES = Answer("StatePolicies", "The state's own rules and the tenant's defaults")
TENANT_RULES = Answer("TenantPolicies", "The tenant's default rules")


def _actor(request: Request, principal: Any) -> str | None:
    return principal.actor or request.query_params.get("actor") or request.headers.get("x-actor")


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/policies",
    opt=ADMIN,
    operation_class=documented(STATE_RULES, problems=(*COMMON, 422)),
)
async def read_state_policies(db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """The state's own rules and the tenant's defaults: {"tenant_id", "fsa_id", "rules", "defaults"}."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    found = await db.policies(tenant_id, fsa_id)
    return json_response(jsontext.encode({"tenant_id": tenant_id, "fsa_id": fsa_id, **found}))


@put(
    "/state/{tenant_id:str}/{fsa_id:str}/policies",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(STATE_RULES, body={JSON: "Rules"}, problems=(*WRITES, 422)),
)
async def set_state_policies(request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """Replaces the state's own rules with {"rules": [...]} ([] removes them). Each rule is a path
    glob and constraints: min, max, enum, type, required, immutable, max_change, and aml_below for
    rules that bind only actors below an AML level. An invalid rule is a 422 and changes nothing."""
    principal = caller(request)
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    await db.set_policy(tenant_id, fsa_id, _rules(await request.body(), state), _actor(request, principal))
    found = await db.policies(tenant_id, fsa_id)
    return json_response(jsontext.encode({"tenant_id": tenant_id, "fsa_id": fsa_id, **found}))


@get(
    "/tenants/{tenant_id:str}/policies",
    opt=ADMIN,
    operation_class=documented(TENANT_RULES, problems=(*COMMON, 422)),
)
async def read_tenant_policies(db: Db, state: State, tenant_id: TenantId) -> Response:
    """The tenant's default rules: {"tenant_id", "rules"}."""
    check_ids(state.settings, tenant_id=tenant_id)
    found = await db.policies(tenant_id, None)
    return json_response(jsontext.encode({"tenant_id": tenant_id, "rules": found["rules"]}))


@put(
    "/tenants/{tenant_id:str}/policies",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(TENANT_RULES, body={JSON: "Rules"}, problems=(*WRITES, 422)),
)
async def set_tenant_policies(request: Request, db: Db, state: State, tenant_id: TenantId) -> Response:
    """Replaces the tenant's default rules, which hold for each of its states on the paths the
    state has no rule of its own for."""
    principal = caller(request)
    check_ids(state.settings, tenant_id=tenant_id)
    rules = await db.set_policy(tenant_id, None, _rules(await request.body(), state), _actor(request, principal))
    return json_response(jsontext.encode({"tenant_id": tenant_id, "rules": rules}))


POLICY_ROUTES = [read_state_policies, set_state_policies, read_tenant_policies, set_tenant_policies]
