"""The original second-generation service's wire contract, where it differs from this service's
(`SMS_COMPAT=v2`, `sms serve --compat v2`; DESIGN §12).

Every route answers in the default contract; this module maps two of those answers, so there is
no second implementation of any route:

- `GET /state/{t}/{f}` is the state's top-level members themselves plus `lineage_version` (the
  version), where the default wraps them as {"tenant_id", "fsa_id", "version", "state"};
- a write to a state refused for what it asks (409: a version conflict or a precondition that
  did not hold; 422: an invalid delta or id, an operator meeting the wrong type, a policy
  refusal) is a 200 {"success": false, "message", "version"}, as that service answered: its
  clients read `success`, not the status. The problem's other members (`type`, `violations`,
  `refusal_id`, `failed`, …) stay beside them; `version` is the state's current version where the
  refusal knows it (conflicts and policy refusals), else null.

What the original's clients need in the default contract too (nested deltas, the comment and
heartbeat shapes) is simply part of it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response

from app.domain import jsontext
from app.errors import Problem
from app.settings import Settings

V2 = "v2"

# The routes the original service had that write to a state, by handler name.
STATE_WRITES = frozenset({"apply_delta", "replace_state", "rollback", "add_comment", "heartbeat", "validate_delta"})
REFUSALS = frozenset({409, 422})


def state_body(settings: Settings, body: str | bytes) -> str | bytes:
    """GET /state's answer under the contract in force."""
    if settings.compat != V2:
        return body
    answer = msgspec.json.decode(body, type=dict[str, msgspec.Raw])
    members = msgspec.json.decode(answer["state"], type=dict[str, msgspec.Raw])  # values stay the bytes sent
    members["lineage_version"] = answer["version"]
    return msgspec.json.encode(members)


def refusal(request: Request[Any, Any, Any], problem: Problem, headers: dict[str, str]) -> Response | None:
    """The v2 answer to a refused write, or None where the default contract's problem stands."""
    settings: Settings = request.app.state.settings
    if settings.compat != V2 or problem.status not in REFUSALS:
        return None
    handler = request.scope.get("route_handler")  # none when no route matched
    if handler is None or handler.handler_name not in STATE_WRITES:
        return None
    extra = dict(problem.extra)
    body = {
        "success": False,
        "message": f"{problem.slug.replace('-', ' ').capitalize()}: {problem.detail}",
        "version": extra.pop("current_version", None),
        "type": problem.type,
        **extra,
    }
    return Response(jsontext.encode(body), status_code=200, media_type="application/json", headers=headers)
