"""HTTP routes (DESIGN §8). Handlers check shapes and limits, then hand JSON text to the database
and its JSON text back; the merge and every guarantee live in SQL."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import PathParameter, QueryParameter
from litestar.status_codes import HTTP_200_OK

from app import metrics
from app.api import compat
from app.api.auth import ADMIN, OPEN, READ, WRITE
from app.api.observability import annotate_span, count_refused, counting_delta
from app.api.schemas import (
    COMMON,
    JSON_PATCH,
    MERGE_PATCH,
    SLICE_SPEC,
    WHERE,
    WRITES,
    Answer,
    documented,
    header,
    not_modified,
    write_parameters,
)
from app.db.group_commit import GroupCommit
from app.db.queries import Database
from app.domain import jsontext
from app.domain.delta import (
    MAX_VERSION,
    WriteMeta,
    batch_writes,
    decode_body,
    delta_text,
    document_text,
    write_meta,
)
from app.domain.ids import check_id
from app.domain.keys import Principal
from app.domain.predicate import check_predicate
from app.domain.summary import slice_body, slice_header, slice_summary, state_summary
from app.domain.tokens import tokenizer
from app.errors import Problem, invalid_slice, malformed, policy_violation
from app.settings import Settings

JSON = "application/json"  # what handlers answer, as text PostgreSQL built

Db = NamedDependency[Database]  # acting for the request's tenants


def caller(request: Request) -> Principal:
    """Who the request acts as (app.api.auth.authorize found out). Read here rather than injected:
    Litestar resolves a handler's dependencies of one level in a task group of their own, per
    request, which cost more than the lookups themselves."""
    return request.state.principal


DEFAULT_MAX_TOKENS = 300
MaxTokens = Annotated[
    int, QueryParameter(ge=20, le=8000, description="Token budget of the summary (as SMS_TOKENIZER counts them)")
]
TenantId = Annotated[str, PathParameter(description="Tenant id")]
FsaId = Annotated[str, PathParameter(description="State id within the tenant")]


def version_query(description: str, name: str | None = None) -> Any:
    """A version as a query parameter. (Litestar leaves a minimum of 0 out of the schema, being
    falsy; schema_extra puts it back.)"""
    return QueryParameter(name=name, ge=0, le=MAX_VERSION, description=description, schema_extra={"minimum": 0})


# Read-your-writes with read replicas (SMS_READ_DATABASE_URL): a read names the version a write
# answered, as a query parameter (which the original clients can send); app.db.queries decides
# which server answers.
MinVersion = Annotated[
    int | None,
    version_query(
        "Read this version of the state or a newer one (a write's answer's): a read replica that has not replayed "
        "it yet is waited for (SMS_READ_WAIT_MS), else the primary answers. Without it a replica may answer from "
        "before your last write; the answer's version says which it read",
        name="min_version",
    ),
]


WRITTEN = Answer("WriteResult", "The write was applied (its version is the ETag)", headers=("ETag",))
DELTA_BODY = {"application/json": "Delta", JSON_PATCH: "JsonPatch", MERGE_PATCH: "MergePatch"}


def check_ids(settings: Settings, **ids: str) -> None:
    """Tenant, state and task ids: path segments (app.domain.ids)."""
    for name, value in ids.items():
        check_id(name, value, settings.limits.max_id_length, segment=True)


def json_response(text: str | bytes, status_code: int = HTTP_200_OK, headers: dict[str, str] | None = None) -> Response:
    return Response(
        text.encode() if isinstance(text, str) else text, status_code=status_code, media_type=JSON, headers=headers
    )


async def _delta_text(request: Request, settings: Settings) -> str:
    """The request body as a delta in the wire format, as JSON text (app.domain.delta.delta_text):
    JSON Patch and Merge Patch are recognised by their media types; application/json is the delta
    map itself."""
    media_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    return delta_text(await request.body(), media_type, settings.limits)


@get(
    "/health",
    opt=OPEN,
    operation_class=documented(
        Answer("Health", "The service and its database answer"), problems=(400, 503), public=True
    ),
)
async def health(db: Db) -> dict[str, Any]:
    """Liveness and database reachability (503 when the database is down)."""
    return {"status": "ok", "database": "ok", "postgres": await db.health()}


@get(
    "/state/{tenant_id:str}",
    opt=READ,
    operation_class=documented(Answer("StateList", "A page of the tenant's states"), problems=(*COMMON, 422)),
)
async def list_states(
    db: Db,
    state: State,
    tenant_id: TenantId,
    prefix: Annotated[str, QueryParameter(max_length=256, description="Only states whose id starts with this")] = "",
    after: Annotated[str, QueryParameter(max_length=256, description="The `next` of the previous page")] = "",
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="At most this many states")] = 100,
) -> Response:
    """The tenant's states in id order, each with its version, entry count, size in bytes and
    when it was created and last changed; page on with `after` = the answer's `next`."""
    check_ids(state.settings, tenant_id=tenant_id)
    return json_response(await db.list_states(tenant_id, prefix, after, limit))


@get(
    "/state/{tenant_id:str}/{fsa_id:str}",
    opt=READ,
    operation_class=documented(
        Answer(
            ("StateDocument", "StateSummary"),
            "The state, or with summary=true its summary (the version is the ETag). Under SMS_COMPAT=v2 the "
            "state is the state's own members plus lineage_version.",
            headers=("ETag", "Cache-Control"),
        ),
        problems=(*COMMON, 422),
        others=not_modified(),
        parameters=[header("If-None-Match", {"type": "string"}, 'The ETag of a version held: "41" (304 if current)')],
    ),
)
async def read_state(
    request: Request,
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    summary: Annotated[bool, QueryParameter(description="Return {version, summary} of the whole state")] = False,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    version: Annotated[int | None, version_query("The state exactly as it was at this version")] = None,
    min_version: MinVersion = None,
) -> Response:
    """The full state: {"tenant_id", "fsa_id", "version", "state"}. ETag is the version; a
    matching If-None-Match gives 304. A state never written is {} at version 0. With
    summary=true: {"tenant_id", "fsa_id", "version", "summary"} within max_tokens."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    if version is not None:
        # an old version never changes: cacheable for good
        body = await db.read_state_at(tenant_id, fsa_id, version, min_version)
        return json_response(
            compat.state_body(state.settings, body),
            headers={"ETag": f'"{version}"', "Cache-Control": "public, max-age=31536000, immutable"},
        )
    if summary:
        current, document = await db.read_document(tenant_id, fsa_id, min_version)
        text = state_summary(tenant_id, fsa_id, current, document, max_tokens, tokenizer(state.settings.tokenizer))
        body = {"tenant_id": tenant_id, "fsa_id": fsa_id, "version": current, "summary": text}
        return json_response(jsontext.encode(body), headers={"ETag": f'"{current}"'})
    known = _etag_version(request.headers.get("if-none-match"))
    current, body = await db.read_state(tenant_id, fsa_id, unless_version=known, min_version=min_version)
    headers = {"ETag": f'"{current}"'}
    if body is None:
        return Response(b"", status_code=304, headers=headers)
    return json_response(compat.state_body(state.settings, body), headers=headers)


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/slice",
    opt=READ,
    operation_class=documented(
        Answer("Slice", "The slice and its summary (the version is the ETag)", headers=("ETag",)),
        problems=(*COMMON, 422),
    ),
)
async def read_slice(
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    specs: Annotated[
        list[str],
        QueryParameter(
            name="slice",
            description="Slice spec(s): task:DESIGN_*, resources.inventory, … (comma-separated, or repeated)",
            # documented as one comma-separated string: the limits hold for all of them together
            schema_extra={"type": "string", "items": None, "pattern": SLICE_SPEC, "max_length": 2000},
        ),
    ],
    k: Annotated[int | None, QueryParameter(ge=1, le=10_000, description="Entries per spec, after ordering")] = None,
    order: Annotated[
        Literal["key", "recent"], QueryParameter(description="By key, or most recently changed first")
    ] = "key",
    where: Annotated[
        str | None,
        QueryParameter(
            max_length=1000,
            description='SQL/JSON path predicate on each entry, e.g. @.status == "OPEN"',
            schema_extra={"pattern": WHERE},
        ),
    ] = None,
    max_tokens: MaxTokens = DEFAULT_MAX_TOKENS,
    min_version: MinVersion = None,
) -> Response:
    """A slice of the state and its LLM-ready summary (DESIGN §5, §6), through the summary cache.
    `slice` is a sparse sub-document with the state's own nesting; `total` counts every match,
    `truncated` says whether k cut any; `cached` says whether the summary came from the cache."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    spec = ",".join(specs)
    if len(spec) > 2000:
        raise invalid_slice("the slice spec is longer than 2000 characters")
    path = f"$ ? ({check_predicate(where)})" if where else None
    counter = tokenizer(state.settings.tokenizer)
    # the tokenizer is part of the cache's key: a body cut by another tokenizer may not fit this one's budget
    options = f"max_tokens={max_tokens} tokenizer={counter.name}"
    read = await db.read_slice(tenant_id, fsa_id, spec, k, order, path, options, min_version)
    header = slice_header(tenant_id, fsa_id, read["version"], spec, read)
    (metrics.SLICE_HITS if read["cached"] else metrics.SLICE_MISSES).inc()
    if read["cached"]:
        body_text = read["summary"]
    else:
        body_text = slice_body(read, header, max_tokens, counter)
        await db.store_slice_summary(tenant_id, fsa_id, read, body_text)
    response = {
        "tenant_id": tenant_id,
        "fsa_id": fsa_id,
        "version": read["version"],
        "slice": read["slice"],
        "summary": slice_summary(header, body_text, max_tokens, counter, grown=_digits_gained(read)),
        "slice_pattern": spec,
        "total": read["total"],
        "truncated": read["truncated"],
        "cached": read["cached"],
    }
    return json_response(jsontext.encode(response), headers={"ETag": f'"{read["version"]}"'})


def _digits_gained(read: dict[str, Any]) -> int:
    """How many digits the version has gained since the slice's summary body was made."""
    return len(str(read["version"])) - len(str(read.get("computed_at", read["version"])))


AliasName = Annotated[
    str,
    PathParameter(
        description="An alias of slice specs: a letter, then up to 62 letters, digits, _ or - (any case)",
        schema_extra={"pattern": "^[A-Za-z][A-Za-z0-9_-]{0,62}$"},
    ),
]
ALIASES = Answer("Aliases", "The state's aliases")


def _aliases(tenant_id: str, fsa_id: str, aliases: dict[str, str]) -> Response:
    return json_response(jsontext.encode({"tenant_id": tenant_id, "fsa_id": fsa_id, "aliases": aliases}))


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/aliases",
    opt=READ,
    operation_class=documented(ALIASES, problems=(*COMMON, 422)),
)
async def read_aliases(db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """The aliases of the state's slice specs, {"task": "tasks", …}: the defaults (task, metric,
    agent, resource) and the state's own."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return _aliases(tenant_id, fsa_id, await db.aliases(tenant_id, fsa_id))


@put(
    "/state/{tenant_id:str}/{fsa_id:str}/aliases/{alias:str}",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(ALIASES, body={JSON: "AliasRequest"}, problems=(*WRITES, 422)),
)
async def set_alias(
    request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId, alias: AliasName
) -> Response:
    """Makes `alias:pattern` in this state's slice specs read a collection; the body is
    {"collection": "tasks"}. Aliases are configuration, not content: setting one is no delta.
    Cached slices read through the alias are read afresh."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    given = decode_body(await request.body(), state.settings.limits)
    if not isinstance(given, dict) or set(given) != {"collection"} or not isinstance(given["collection"], str):
        raise malformed('send the alias\'s collection as {"collection": "<name>"}')
    return _aliases(tenant_id, fsa_id, await db.set_alias(tenant_id, fsa_id, alias, given["collection"]))


@delete(
    "/state/{tenant_id:str}/{fsa_id:str}/aliases/{alias:str}",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(ALIASES, problems=(*WRITES, 422)),
)
async def remove_alias(db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId, alias: AliasName) -> Response:
    """Removes the state's own alias; a default one of that name applies again."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return _aliases(tenant_id, fsa_id, await db.set_alias(tenant_id, fsa_id, alias, None))


@post(
    "/state/{tenant_id:str}/{fsa_id:str}",
    status_code=HTTP_200_OK,
    opt=ADMIN,
    operation_class=documented(
        WRITTEN, body={JSON: "State"}, problems=(*WRITES, 409, 422), parameters=write_parameters()
    ),
)
async def replace_state(request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """Create or replace the whole state with the JSON object in the body, logged as one delta."""
    principal = caller(request)
    settings = state.settings
    with counting_delta():
        check_ids(settings, tenant_id=tenant_id, fsa_id=fsa_id)
        document = document_text(await request.body(), settings.limits)
        meta = principal.stamp(write_meta(dict(request.query_params), dict(request.headers), settings.limits))
        return write_response(await db.replace_state(tenant_id, fsa_id, document, meta))


@post(
    "/state/{tenant_id:str}/{fsa_id:str}/delta",
    status_code=HTTP_200_OK,
    opt=WRITE,
    operation_class=documented(WRITTEN, body=DELTA_BODY, problems=(*WRITES, 409, 422), parameters=write_parameters()),
)
async def apply_delta(request: Request, db: Db, state: State, tenant_id: TenantId, fsa_id: FsaId) -> Response:
    """Apply a delta: the body is the delta map (DESIGN §4.1); metadata as query parameters
    (actor, lineage_id, delta_id, expected_version, and any others kept as meta, such as the
    claimed aml_level) or headers (X-Actor, X-Lineage-Id, traceparent, Idempotency-Key, If-Match).
    A delta that breaks a policy is a 422 policy-violation listing each rule it breaks."""
    principal = caller(request)
    settings = state.settings
    with counting_delta():
        check_ids(settings, tenant_id=tenant_id, fsa_id=fsa_id)
        delta = await _delta_text(request, settings)
        meta = principal.stamp(write_meta(dict(request.query_params), dict(request.headers), settings.limits))
        return write_response(await apply_one(db, state, tenant_id, fsa_id, delta, meta))


async def apply_one(db: Database, state: State, tenant_id: str, fsa_id: str, delta: str, meta: WriteMeta) -> str:
    """A delta's result (JSON text): through group commit when it is on, so that it shares a busy
    state's transaction with the deltas that meet it there; else alone."""
    group_commit: GroupCommit | None = state.group_commit
    if group_commit is None:
        return await db.apply_delta(tenant_id, fsa_id, delta, meta)
    return await group_commit.apply(db, tenant_id, fsa_id, delta, meta)


@post(
    "/state/{tenant_id:str}/{fsa_id:str}/deltas",
    status_code=HTTP_200_OK,
    opt=WRITE,
    operation_class=documented(
        Answer("BatchResult", "Each write's result, in order: applied, or the problem it met"),
        body={JSON: "Batch"},
        problems=(*WRITES, 409, 422),
        parameters=[parameter for parameter in write_parameters() if parameter.name == "traceparent"],
    ),
)
async def apply_batch(
    request: Request,
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    atomic: Annotated[
        bool, QueryParameter(description="All or nothing: the first write that fails rolls back the batch")
    ] = False,
) -> Response:
    """Apply a batch of writes to the state in one transaction, in order: a JSON array of
    {"delta", "actor", "lineage_id", "delta_id", "expected_version", "meta"} (only the delta is
    required; X-Actor, X-Lineage-Id and traceparent apply to every write). Each write gets its own
    version, checks and result, as if it had been sent alone: independently by default (a write
    that fails is refused alone), or with atomic=true all or nothing — then a failure is the
    failing write's problem, with its `index` and every write's result."""
    principal = caller(request)
    settings = state.settings
    check_ids(settings, tenant_id=tenant_id, fsa_id=fsa_id)
    writes = [
        (delta, principal.stamp(meta))
        for delta, meta in batch_writes(await request.body(), dict(request.headers), settings.limits)
    ]
    results = await db.apply_deltas(tenant_id, fsa_id, writes, atomic)
    return batch_response(tenant_id, fsa_id, atomic, results)


def batch_response(tenant_id: str, fsa_id: str, atomic: bool, results: list[str | Problem]) -> Response:
    """Each result as a single write would have answered: its result, or its problem's body."""
    problems: dict[int, Problem] = {}
    outcomes: list[Any] = []
    for index, result in enumerate(results):
        if isinstance(result, Problem):
            problems[index] = result
            outcomes.append(result.to_dict())
            count_refused(result)
        else:
            outcomes.append(msgspec.Raw(result.encode()))
            metrics.DELTAS_APPLIED.inc()
    if atomic and problems:
        index, cause = next((i, p) for i, p in problems.items() if p.slug != "batch-aborted")
        cause.extra.update(index=index, results=outcomes)
        raise cause
    body = {
        "tenant_id": tenant_id,
        "fsa_id": fsa_id,
        "atomic": atomic,
        "applied": len(outcomes) - len(problems),
        "results": outcomes,
    }
    return json_response(jsontext.encode(body))


@post(
    "/validate/delta",
    status_code=HTTP_200_OK,
    opt=WRITE,
    operation_class=documented(
        Answer(("DeltaCheck", "DryRun"), "The delta is valid: its normal form, or what applying it would do"),
        body=DELTA_BODY,
        problems=(*WRITES, 409, 422),
        parameters=write_parameters(),
    ),
)
async def validate_delta(
    request: Request,
    db: Db,
    state: State,
    tenant_id: Annotated[str | None, QueryParameter(description="With fsa_id: dry-run against that state")] = None,
    fsa_id: Annotated[str | None, QueryParameter(description="With tenant_id: dry-run against that state")] = None,
) -> Response:
    """Validate a delta without applying it. With tenant_id and fsa_id it is applied in a
    transaction that is rolled back, so the answer (the version it would get, the paths it would
    change, or the 409/422 it would meet) is exactly what would happen; without them only its
    shape is checked (and its metadata, as a write's). Nothing changes and nothing is notified."""
    principal = caller(request)
    settings = state.settings
    delta = await _delta_text(request, settings)
    meta = principal.stamp(write_meta(dict(request.query_params), dict(request.headers), settings.limits))
    if tenant_id is None and fsa_id is None:
        normalized = await db.normalize_delta(delta)
        return json_response(jsontext.encode({"success": True, "valid": True, **normalized}))  # exact numbers
    check_ids(settings, tenant_id=tenant_id or "", fsa_id=fsa_id or "")
    outcome = await db.dry_run(tenant_id, fsa_id, delta, meta)
    if outcome.get("refused"):
        raise policy_violation(outcome)
    return json_response(jsontext.encode({"valid": True, **outcome, "applied": False}))


@get(
    "/state/{tenant_id:str}/{fsa_id:str}/deltas",
    opt=READ,
    operation_class=documented(Answer("DeltaLog", "A page of the log"), problems=(*COMMON, 422)),
)
async def read_deltas(
    db: Db,
    state: State,
    tenant_id: TenantId,
    fsa_id: FsaId,
    since: Annotated[int, version_query("Return deltas after this version")] = 0,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="At most this many deltas")] = 100,
    min_version: MinVersion = None,
) -> Response:
    """The delta log after `since`, oldest first: for catch-up and audit. `more` says whether
    another page follows."""
    check_ids(state.settings, tenant_id=tenant_id, fsa_id=fsa_id)
    return json_response(await db.read_deltas(tenant_id, fsa_id, since, limit, min_version))


def _etag_version(value: str | None) -> int | None:
    if not value:
        return None
    tag = value.split(",")[0].strip().removeprefix("W/").strip('"')
    return int(tag) if tag.isdigit() and len(tag) < 19 else None


def write_response(result: str) -> Response:
    """The answer to a write (its result object as JSON text, ETag = its version), or the 422 of a
    delta a policy refused."""
    decoded = msgspec.json.decode(result)
    if decoded.get("refused"):
        raise policy_violation(decoded)
    version = decoded.get("version")
    if version is None:
        return json_response(result)
    annotate_span(**{"sms.version": version})
    return json_response(result, headers={"ETag": f'"{version}"'})


ROUTES = [
    health,
    list_states,
    read_state,
    read_slice,
    read_aliases,
    set_alias,
    remove_alias,
    replace_state,
    apply_delta,
    apply_batch,
    validate_delta,
    read_deltas,
]
