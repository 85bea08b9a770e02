"""History and lineage routes (DESIGN §8): time travel, path history, diffs, rollback, lineage,
"what changed since", and the original service's heartbeats and task comments. Each is one SQL
function (sms.document_at, sms.path_changes, sms.rollback, sms.changes_digest, …), but for
heartbeats: deltas, group-committed with a busy state's others. Diffs are RFC 6902 patches
computed with jsonpatch."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import jsonpatch
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK

from app.api.auth import ADMIN, READ, WRITE
from app.api.routes import (
    DEFAULT_MAX_TOKENS,
    JSON,
    WRITTEN,
    Db,
    FsaId,
    MaxTokens,
    MinVersion,
    TenantId,
    apply_one,
    caller,
    check_ids,
    json_response,
    version_query,
    write_response,
)
from app.api.schemas import COMMON, DOTTED_PATH, SLICE_SPEC, WRITES, Answer, documented, write_parameters
from app.domain import jsontext
from app.domain.delta import HEARTBEAT_TIME, decode_body, heartbeat_delta, write_meta
from app.domain.ids import check_id
from app.domain.summary import changes_digest
from app.domain.tokens import tokenizer
from app.errors import Problem, malformed

TaskId = Annotated[str, PathParameter(description="A member of the state's tasks")]
AgentPath = Annotated[str, PathParameter(description="{agent}/heartbeat; agent names may contain /")]
Version = Annotated[int, version_query("A version of the state")]
Limit = Annotated[int, QueryParameter(ge=1, le=1000, description="At most this many rows")]


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/history",
    opt=READ,
    operation_class=documented(Answer("PathHistory", "The path's changes, newest first"), problems=(*COMMON, 422)),
)
async def path_history(
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    path: Annotated[
        str,
        QueryParameter(
            min_length=1,
            max_length=1000,
            description="Dotted path, e.g. tasks.T1.status",
            schema_extra={"pattern": DOTTED_PATH},
        ),
    ],
    limit: Limit = 100,
    min_version: MinVersion = None,
) -> Response:
    """Who changed `path`, when, from what to what, newest first (`old`/`new` are left out when
    the path did not exist before / does not exist after)."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    rows = await db.path_changes(tenant_id, fsa_id, path, limit, min_version)
    changes = []
    for row in rows:
        change: dict[str, Any] = {
            "version": row["version"],
            "path": row["path"],
            "actor": row["actor"],
            "lineage_id": row["lineage_id"],
            "trace_id": row["trace_id"],
            "created_at": row["created_at"].isoformat(),
        }
        if row["existed"]:
            change["old"] = row["old_value"]
        if row["exists_now"]:
            change["new"] = row["new_value"]
        changes.append(change)
    body = {"tenant_id": tenant_id, "fsa_id": fsa_id, "path": path, "changes": changes}
    return json_response(jsontext.encode(body))


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/diff",
    opt=READ,
    operation_class=documented(Answer("Diff", "The patch from one version to the other"), problems=(*COMMON, 422)),
)
async def diff(
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    from_version: Annotated[int, version_query("Older version", name="from")],
    to_version: Annotated[int | None, version_query("Newer version (default: current)", name="to")] = None,
) -> Response:
    """An RFC 6902 JSON Patch that turns the state at `from` into the state at `to`."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    if to_version is None:
        to_version = await db.current_version(tenant_id, fsa_id)
    before, after = await db.documents_at(tenant_id, fsa_id, from_version, to_version)
    patch = jsonpatch.JsonPatch.from_diff(before, after, dumps=lambda value: jsontext.encode(value).decode()).patch
    body = {"tenant_id": tenant_id, "fsa_id": fsa_id, "from": from_version, "to": to_version, "patch": patch}
    return json_response(jsontext.encode(body))


@post(
    "/state/{tenant_id:str}/{fsa_id:str}/rollback",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(WRITTEN, problems=(*WRITES, 409, 422), parameters=write_parameters()),
)
async def rollback(
    request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId, to_version: Version
) -> Response:
    """Restore the content the state had at `to_version`, as a new logged delta (with its actor,
    lineage and NOTIFY); the log stays append-only. Policies hold for it like for any delta."""
    principal = caller(request)
    settings = state.settings
    check_ids(settings, tenant_id=tenant_id, fsa_id=fsa_id)
    params = {k: v for k, v in request.query_params.items() if k != "to_version"}
    meta = principal.stamp(write_meta(params, dict(request.headers), settings.limits))
    return write_response(await db.rollback(tenant_id, fsa_id, to_version, meta))


@get(
    "/lineage/{lineage_id:str}",
    opt=READ,
    operation_class=documented(Answer("Lineage", "The lineage's deltas in time order"), problems=(*COMMON, 422)),
)
async def lineage(
    db: Db,
    state: State,
    lineage_id: Annotated[str, QueryParameter(description="Lineage (span) id")],
    tenant_id: Annotated[str, QueryParameter(description="Tenant whose states to search")],
    limit: Limit = 1000,
) -> Response:
    """A lineage's deltas across the tenant's states, in time order."""
    check_ids(state.settings, tenant_id=tenant_id, lineage_id=lineage_id)
    return json_response(await db.lineage(tenant_id, lineage_id, limit))


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/changes",
    opt=READ,
    operation_class=documented(Answer("Changes", "What changed since the version"), problems=(*COMMON, 422)),
)
async def changes(
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    since: Version,
    slice_spec: Annotated[
        str | None,
        QueryParameter(
            name="slice",
            max_length=2000,
            description="Only changes touching this slice",
            schema_extra={"pattern": SLICE_SPEC},
        ),
    ] = None,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    min_version: MinVersion = None,
) -> Response:
    """What changed since version `since`: a token-budgeted digest (who, which lineages, each
    changed path once, old -> new) plus the same as data."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    data, parts = await db.changes_since(tenant_id, fsa_id, since, slice_spec, min_version)
    digest = changes_digest(parts, max_tokens, tokenizer(state.settings.tokenizer))
    body = {"tenant_id": tenant_id, "fsa_id": fsa_id, **data, "digest": digest}
    return json_response(jsontext.encode(body))


@post(
    "/agents/{tenant_id:str}/{fsa_id:str}/{agent_path:path}",
    status_code=HTTP_200_OK,
    opt=WRITE,
    operation_class=documented(
        Answer("Heartbeat", "The heartbeat was recorded (its version is the ETag)", headers=("ETag",)),
        problems=(*WRITES, 409, 422),
        parameters=write_parameters(),
    ),
)
async def heartbeat(
    request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId, agent_path: AgentPath
) -> Response:
    """POST /agents/{tenant}/{fsa}/{agent}/heartbeat: records agents_online.{agent} as the
    latest time it was seen. Agent names may contain "/". The delta's actor is the agent, or the
    actor the API key names."""
    principal = caller(request)
    settings = state.settings
    check_ids(settings, tenant_id=tenant_id, fsa_id=fsa_id)
    agent, _, action = agent_path.strip("/").rpartition("/")
    if action != "heartbeat" or not agent:
        raise Problem(404, "not-found", "Not Found", "use POST /agents/{tenant}/{fsa}/{agent}/heartbeat")
    check_id("agent", agent, settings.limits.max_id_length)
    meta = principal.stamp(write_meta(dict(request.query_params), dict(request.headers), settings.limits))
    seen = datetime.now(UTC).strftime(HEARTBEAT_TIME)
    delta, beat = heartbeat_delta(agent, seen, meta, principal.actor)
    # as the original answered: the write, the agent and the time recorded
    result = jsontext.decode(await apply_one(db, state, tenant_id, fsa_id, delta, beat))
    result |= {"agent": agent, "timestamp": seen}
    return write_response(jsontext.encode(result).decode())


@post(
    "/tasks/{tenant_id:str}/{fsa_id:str}/{task_id:str}/comment",
    status_code=HTTP_200_OK,
    opt=WRITE,
    operation_class=documented(
        Answer("NewComment", "The comment as stored"),
        body={JSON: "CommentRequest"},
        problems=(*WRITES, 422),
    ),
)
async def add_comment(
    request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId, task_id: TaskId
) -> Response:
    """Comment on a task (404 when tasks.{task_id} does not exist): author, markdown body,
    is_blocker and lineage_id as query parameters, or as a JSON object with those keys. When the
    API key names an actor, that is the author."""
    principal = caller(request)
    settings = state.settings
    check_ids(settings, tenant_id=tenant_id, fsa_id=fsa_id, task_id=task_id)
    fields: dict[str, Any] = dict(request.query_params)
    raw = await request.body()
    if raw.strip():
        given = decode_body(raw, settings.limits)
        if not isinstance(given, dict):
            raise malformed("send the comment as a JSON object: {author, body, is_blocker, lineage_id}")
        fields.update(given)
    body = fields.get("body", fields.get("comment", fields.get("content")))
    author = principal.actor or fields.get("author")
    if not isinstance(author, str) or not isinstance(body, str):
        raise Problem(422, "invalid-comment", "The comment is invalid", "a comment needs an author and a body (text)")
    result = await db.add_comment(
        tenant_id,
        fsa_id,
        task_id,
        author,
        body,
        _flag(fields.get("is_blocker", False)),
        fields.get("lineage_id"),
    )
    return json_response(result)


@get(
    "/tasks/{tenant_id:str}/{fsa_id:str}/{task_id:str}/comments",
    opt=READ,
    operation_class=documented(
        Answer("CommentList", "The comments, newest first"),
        problems=(*COMMON, 422),
    ),
)
async def list_comments(
    db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId, task_id: TaskId, limit: Limit = 50
) -> Response:
    """A task's comments, newest first: {"tenant_id", "fsa_id", "task_id", "comments"}."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id, task_id=task_id)
    return json_response(await db.comments(tenant_id, fsa_id, task_id, limit))


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).lower() in {"1", "true", "yes", "on"}:
        return True
    if str(value).lower() in {"0", "false", "no", "off", ""}:
        return False
    raise malformed(f"is_blocker must be true or false, not {str(value)[:20]!r}")


HISTORY_ROUTES = [path_history, diff, rollback, lineage, changes, heartbeat, add_comment, list_comments]
