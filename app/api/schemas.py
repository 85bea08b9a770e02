"""What the HTTP API takes and answers, for its OpenAPI document (DESIGN §8, §13).

Handlers answer with JSON text that PostgreSQL built (exact numbers, never decoded and encoded
again) and read state bodies as the bytes that were sent (app.domain.delta reads only their top
level), so no handler signature can say what goes in and out. Instead:

- answers and small request bodies are the msgspec Structs below, whose JSON Schemas msgspec
  itself generates (the library that encodes and decodes them, so schema and wire agree);
- state bodies — the delta map and its ops-list form, JSON Patch, Merge Patch, a whole state — and
  the JSON values they carry are written here as JSON Schema, within the service's limits;
- each route says what it takes, answers and may refuse with `operation_class=documented(...)`,
  which writes that into its operation;
- `add_components` puts the schemas (sized by the running service's limits) and the security
  schemes into the document once the app is built, since Litestar replaces components/schemas
  with the ones it generated itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

import msgspec
from litestar import Litestar
from litestar.openapi.spec import (
    Components,
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    Operation,
    Parameter,
    Reference,
    RequestBody,
    Schema,
    SecurityScheme,
)

from app.api.compat import V2
from app.domain.delta import MAX_META_NUMBER, MAX_VERSION
from app.domain.ids import UNSEEN
from app.domain.keys import SCOPES
from app.settings import Limits, Settings

PROBLEM_JSON = "application/problem+json"
JSON = "application/json"
EVENT_STREAM = "text/event-stream"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"

Version = Annotated[int, msgspec.Meta(ge=0, le=MAX_VERSION)]
UNSET: Any = msgspec.UNSET
Unset = msgspec.UnsetType

# A duration as app.domain.keys.parse_duration reads it: 1 to 999999 of s, m, h, d or w (30d, 12h).
DURATION = (
    r"^\s*(?:[1-9][0-9]{0,5}|0[1-9][0-9]{0,4}|00[1-9][0-9]{0,3}|000[1-9][0-9]{0,2}|0000[1-9][0-9]?|00000[1-9])"
    r"\s*[smhdw]\s*$"
)

# A dotted path (sms.parse_path): non-empty keys, `\.` a literal dot and `\\` a backslash, at most 64 keys.
DOTTED_PATH = r"^(?:[^.\\\x00]|\\[.\\])+(?:\.(?:[^.\\\x00]|\\[.\\])+){0,63}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


# --- answers -----------------------------------------------------------------------------------


class Health(msgspec.Struct):
    """The service and its database answer."""

    status: Literal["ok"]
    database: Literal["ok"]
    postgres: str


class Liveness(msgspec.Struct):
    """The process answers."""

    status: Literal["ok"]


class Readiness(msgspec.Struct):
    """The service may be sent requests: its database answers and is migrated far enough."""

    status: Literal["ready"]
    schema_revision: str


class StateDocument(msgspec.Struct):
    """A whole state (`{}` at version 0 before its first delta)."""

    tenant_id: str
    fsa_id: str
    version: Version
    state: dict[str, Any]


class StateSummary(msgspec.Struct):
    """The LLM-ready summary of a whole state (`?summary=true`)."""

    tenant_id: str
    fsa_id: str
    version: Version
    summary: str


class Slice(msgspec.Struct):
    """A slice: a sparse sub-document with the state's own nesting, and its summary."""

    tenant_id: str
    fsa_id: str
    version: Version
    slice: dict[str, Any]
    summary: str
    slice_pattern: str
    total: Annotated[int, msgspec.Meta(ge=0)]
    truncated: bool
    cached: bool


class Aliases(msgspec.Struct):
    """The aliases of a state's slice specs: alias -> collection."""

    tenant_id: str
    fsa_id: str
    aliases: dict[str, str]


class WriteResult(msgspec.Struct):
    """A write that was applied (or had been: `duplicate` for a retried idempotency key)."""

    success: Literal[True]
    version: Version
    delta_id: UUID | None  # None: a replacement that changed nothing, so logged nothing
    changed: list[str]
    duplicate: bool


class NormalizedOp(msgspec.Struct):
    """One operation as the log keeps it: the path as its keys."""

    op: Literal["set", "unset", "inc", "max", "min", "add", "remove", "push", "merge"]
    path: list[str]
    value: Any = UNSET


class NormalizedExpect(msgspec.Struct):
    """One precondition: the path holds `value`, or exists (or not)."""

    path: list[str]
    value: Any = UNSET
    exists: bool | Unset = UNSET


class DeltaCheck(msgspec.Struct):
    """A delta's shape checked without a state: its normalised ops and preconditions."""

    success: Literal[True]
    valid: Literal[True]
    ops: list[NormalizedOp]
    expect: list[NormalizedExpect]


class DryRun(msgspec.Struct):
    """What applying a delta to the state would do, from a transaction that was rolled back."""

    valid: Literal[True]
    success: Literal[True]
    version: Version
    changed: list[str]
    duplicate: bool
    current_version: Version
    applied: Literal[False]
    delta_id: UUID | Unset = UNSET  # only with an idempotency key


class LoggedDelta(msgspec.Struct):
    """A delta as the log keeps it."""

    version: Version
    delta_id: UUID
    actor: str | None
    lineage_id: str | None
    trace_id: str | None
    parent_id: str | None
    meta: dict[str, Any]
    ops: list[NormalizedOp]
    paths: list[str]
    created_at: datetime


class StateInfo(msgspec.Struct):
    """A state of a tenant: its version, entry count, size of its values in bytes, and times."""

    fsa_id: str
    version: Version
    entries: int
    size_bytes: int
    created_at: datetime
    updated_at: datetime


class StateList(msgspec.Struct):
    """A page of a tenant's states in id order; `next` is the `after` of the next page (null on the last)."""

    tenant_id: str
    states: list[StateInfo]
    next: str | None


class DeltaLog(msgspec.Struct):
    """A page of a state's log after `since`, oldest first; `more` when another page follows."""

    tenant_id: str
    fsa_id: str
    since: Version
    version: Version
    deltas: list[LoggedDelta]
    more: bool


class LineageDelta(LoggedDelta):
    """A delta of a lineage, with the state it changed."""

    fsa_id: str


class Lineage(msgspec.Struct):
    """A lineage's deltas across the tenant's states, in time order."""

    tenant_id: str
    lineage_id: str
    deltas: list[LineageDelta]


class PathChange(msgspec.Struct):
    """One change of a path: `old` is absent when the path did not exist before, `new` when it
    does not exist after."""

    version: Version
    path: str
    actor: str | None
    lineage_id: str | None
    trace_id: str | None
    created_at: datetime
    old: Any = UNSET
    new: Any = UNSET


class PathHistory(msgspec.Struct):
    """Who changed a path, when, from what to what, newest first."""

    tenant_id: str
    fsa_id: str
    path: str
    changes: list[PathChange]


class PatchStep(msgspec.Struct):
    """One RFC 6902 operation."""

    op: Literal["add", "remove", "replace", "move", "copy", "test"]
    path: str
    value: Any = UNSET
    from_: str | Unset = msgspec.field(default=UNSET, name="from")


class Diff(msgspec.Struct):
    """An RFC 6902 JSON Patch from the state at `from` to the state at `to`."""

    tenant_id: str
    fsa_id: str
    from_: Version = msgspec.field(name="from")
    to: Version
    patch: list[PatchStep]


class ChangedPath(msgspec.Struct):
    """A path changed since a version: its value then (`old`, absent if it did not exist) and now
    (`new`, absent if removed), the last version that changed it and who did."""

    path: str
    version: Version
    actors: list[str]
    old: Any = UNSET
    new: Any = UNSET


class Changes(msgspec.Struct):
    """What changed since a version, as data and as a token-budgeted digest."""

    tenant_id: str
    fsa_id: str
    since: Version
    version: Version
    deltas: Annotated[int, msgspec.Meta(ge=0)]
    actors: dict[str, int]
    lineages: dict[str, int]
    changes: list[ChangedPath]
    digest: str


class Comment(msgspec.Struct):
    """A comment on a task; its markdown is both `body` and `body_md` (the original's name)."""

    comment_id: int
    task_id: str
    author: str
    body: str
    body_md: str
    is_blocker: bool
    lineage_id: str | None
    created_at: datetime


class CommentList(msgspec.Struct):
    """A task's comments, newest first."""

    tenant_id: str
    fsa_id: str
    task_id: str
    comments: list[Comment]


class NewComment(Comment):
    """A comment just made."""

    success: Literal[True]
    tenant_id: str
    fsa_id: str


class Heartbeat(WriteResult):
    """A heartbeat recorded: the write, the agent and the time recorded (ISO 8601, UTC)."""

    agent: str
    timestamp: str


AmlLevel = Annotated[int, msgspec.Meta(ge=1, le=100)]


class Rule(msgspec.Struct, forbid_unknown_fields=True):
    """A policy rule: a path glob (dotted keys, `*` and `?` within a key, `**` as the last key
    for "this and everything below") and what values there must keep to. It needs at least one
    of min, max, enum, type, required, immutable, max_change; min may not be above max; with `**`
    only required, immutable and max_change apply. `aml_below: N` makes it bind only actors whose
    AML level is below N."""

    path: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=512,
            pattern=DOTTED_PATH,
            extra_json_schema={"not": {"pattern": r"(^|\.)\*\*\."}},
        ),
    ]
    min: float | Unset = UNSET
    max: float | Unset = UNSET
    enum: (
        Annotated[
            list[Any],
            msgspec.Meta(min_length=1, max_length=1000, extra_json_schema={"items": _ref("Json")}),
        ]
        | Unset
    ) = UNSET
    type: Literal["string", "number", "integer", "boolean", "object", "array", "null"] | Unset = UNSET
    required: Literal[True] | Unset = UNSET
    immutable: Literal[True] | Unset = UNSET
    max_change: Annotated[float, msgspec.Meta(ge=0)] | Unset = UNSET
    aml_below: AmlLevel | Unset = UNSET
    name: Annotated[str, msgspec.Meta(max_length=200)] | Unset = UNSET


class Rules(msgspec.Struct, forbid_unknown_fields=True):
    """A rule set: `{"rules": [{"path": "resources.inventory.*", "min": 0}, …]}` ([] removes
    them)."""

    rules: list[Rule]


class StatePolicies(msgspec.Struct):
    """A state's own rules, and the tenant's defaults, which hold where the state has none."""

    tenant_id: str
    fsa_id: str
    rules: list[Rule]
    defaults: list[Rule]


class TenantPolicies(msgspec.Struct):
    """A tenant's default rules."""

    tenant_id: str
    rules: list[Rule]


Scope = Literal["read", "write", "admin"]


def _documented(schema: dict[str, Any]) -> msgspec.Meta:
    """Constraints for the document only: the service checks them itself, with its own errors."""
    return msgspec.Meta(extra_json_schema=schema)


_ID = _ref("Id")


class KeyRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A key to make: its tenants, its scopes (each allows the ones before: read < write <
    admin), and optionally the actor its writes are made as, the highest AML level it may claim,
    when it expires (`30d`, `12h`, `15m`, `2w`, `90s`), its rate limit (requests per second) and a
    label."""

    tenants: Annotated[
        list[Annotated[str, _documented(_ref("SegmentId"))]],
        _documented({"minItems": 1, "maxItems": 100}),
    ]
    scopes: Annotated[list[Annotated[str, _documented({"enum": list(SCOPES)})]], _documented({"minItems": 1})]
    actor: Annotated[str, _documented(_ID)] | None = None
    # a whole number, which JSON Schema lets a client write as 78.0 too: _new_key takes both
    aml_level: Annotated[float, _documented({"type": "integer", "minimum": 0, "maximum": 100})] | None = None
    expires_in: Annotated[str, _documented({"pattern": DURATION})] | None = None
    rate_limit: Annotated[float, _documented({"exclusiveMinimum": 0, "maximum": 1e6})] | None = None
    label: Annotated[str, _documented(_ID)] | None = None


class KeyRecord(msgspec.Struct):
    """An API key as the service keeps it (never the key itself)."""

    key_id: str
    tenants: list[str]
    scopes: list[Scope]
    actor: str | None
    aml_level: int | None
    rate_limit: float | None
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


class NewKeyRecord(KeyRecord):
    """A key just made: `key` is shown this once; the service keeps only its hash."""

    key: str


class KeyList(msgspec.Struct):
    """The keys this key may manage, oldest first."""

    keys: list[KeyRecord]


class AliasRequest(msgspec.Struct, forbid_unknown_fields=True):
    """The collection an alias reads (1 to 512 characters without control characters)."""

    collection: Annotated[str, msgspec.Meta(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]


class CommentRequest(msgspec.Struct):
    """A comment on a task. (The original clients' form, these as query parameters, is accepted
    too; `comment` and `content` stand for `body`.) When the API key names an actor, that is the
    author."""

    author: Annotated[str, _documented(_ID)]
    body: Annotated[str, msgspec.Meta(min_length=1, max_length=65536, pattern="^[^\x00]*$")]
    is_blocker: bool = False
    lineage_id: Annotated[str, _documented(_ref("SegmentId"))] | None = None


class Erasure(msgspec.Struct):
    """The record of an erasure (kept in sms.erasures after the state is gone): a purge of the
    state (`action` purge; actor "ttl" when its TTL ran out) or a compaction of its log and history
    up to `through_version`; who asked (the actor, the API key, the database role), when, the
    state's version then, and the rows removed from each table."""

    erasure_id: UUID
    tenant_id: str
    fsa_id: str
    action: Literal["purge", "compact"]
    actor: str | None
    key_id: str | None
    db_user: str
    erased_at: datetime
    last_version: Version
    through_version: Version | None
    removed: dict[str, Annotated[int, msgspec.Meta(ge=0)]]


class ErasureList(msgspec.Struct):
    """A state's erasure records, newest first: they outlive the state."""

    tenant_id: str
    fsa_id: str
    erasures: list[Erasure]


class Expiry(msgspec.Struct):
    """A state's TTL: it is purged once it has gone `expires_after_seconds` without a delta (null:
    never); its last delta (null: none yet) and when it expires."""

    tenant_id: str
    fsa_id: str
    expires_after_seconds: Annotated[int, msgspec.Meta(ge=1)] | None
    last_write_at: datetime | None
    expires_at: datetime | None


class ExpiryRequest(msgspec.Struct, forbid_unknown_fields=True):
    """A state's TTL: how long it may go without a delta before it is purged, as a whole number
    and a unit (`90s`, `15m`, `12h`, `7d`, `2w`; 1 to 999999); null clears it."""

    expires_after: Annotated[str, _documented({"pattern": DURATION})] | None


class Violation(msgspec.Struct):
    """A policy rule a write would break."""

    path: str
    rule: str
    message: str
    value: Any = UNSET
    limit: Any = UNSET
    name: str | Unset = UNSET
    aml_level: int | Unset = UNSET
    aml_below: int | Unset = UNSET


class Problem(msgspec.Struct):
    """An error, as RFC 9457 problem details: `type` is a stable URN (`urn:sms:problem:<slug>`),
    `detail` says what was wrong, `success` is always false. Members beyond these say more where
    they apply: `path` (the offending path), `field` (the offending id), `current` and
    `current_version` (a conflict: what the state holds now), `failed` (the $expect paths that did
    not hold), `violations`, `refusal_id` (a policy refusal), `outcome: "unknown"` (a 503 to a
    write, which may have been applied: retry it with the same Idempotency-Key), `index` and
    `results` (the failing write of an all-or-nothing batch, and every write's result)."""

    type: str
    title: str
    status: Annotated[int, msgspec.Meta(ge=400, le=599)]
    detail: str
    success: Literal[False]
    path: str | Unset = UNSET
    field: str | Unset = UNSET
    current: Any = UNSET
    current_version: Version | Unset = UNSET
    failed: list[str] | Unset = UNSET
    violations: list[Violation] | Unset = UNSET
    refusal_id: UUID | Unset = UNSET
    outcome: Literal["unknown"] | Unset = UNSET
    index: int | Unset = UNSET
    results: list[Any] | Unset = UNSET


STRUCTS = (
    Health,
    Liveness,
    Readiness,
    StateDocument,
    StateSummary,
    Slice,
    Aliases,
    WriteResult,
    DeltaCheck,
    DryRun,
    StateList,
    DeltaLog,
    Lineage,
    PathHistory,
    Diff,
    Changes,
    NewComment,
    CommentList,
    Heartbeat,
    Rules,
    StatePolicies,
    TenantPolicies,
    KeyRequest,
    NewKeyRecord,
    KeyList,
    AliasRequest,
    CommentRequest,
    ErasureList,
    Expiry,
    ExpiryRequest,
    Problem,
)


# --- state bodies and the values they carry, as JSON Schema -------------------------------------


# Characters an id may not hold (app.domain.ids), as a JSON Schema character class.
_UNSEEN_CLASS = UNSEEN.pattern[1:-1]
NO_NUL = "^[^\\u0000]*$"  # PostgreSQL stores no NUL character in text or JSON


def id_schema(max_length: int, *, segment: bool = False) -> dict[str, Any]:
    """An id (app.domain.ids.check_id); a path segment also without "/" and not "." or ".."."""
    schema: dict[str, Any] = {
        "type": "string",
        "minLength": 1,
        "maxLength": max_length,
        "pattern": f"^[^{_UNSEEN_CLASS}{'/' if segment else ''}]+$",
    }
    if segment:
        schema["not"] = {"enum": [".", ".."]}
    return schema


def _path_pattern(max_keys: int = 64) -> str:
    """A dotted path (sms.parse_path): non-empty keys separated by single dots, `\\.` a literal
    dot and `\\\\` a backslash, at most 64 keys; the first may not start with $ (reserved)."""
    key = r"(?:[^.\\\u0000]|\\[.\\])+"
    first = r"(?:[^.\\$\u0000]|\\[.\\])(?:[^.\\\u0000]|\\[.\\])*"
    return f"^{first}(?:\\.{key}){{0,{max_keys - 1}}}$"


def value_schemas(limits: Limits) -> dict[str, Any]:
    """The JSON Schemas of state bodies and the values they carry, within `limits`."""
    key = {"type": "string", "maxLength": limits.max_key_length, "pattern": NO_NUL}
    plain_key = {"type": "string", "maxLength": limits.max_key_length, "pattern": "^(?:[^$\\u0000][^\\u0000]*)?$"}
    depth = f"Values nest at most {limits.max_depth} levels deep, counting the delta (or state) that holds them as one."
    header_class = _UNSEEN_CLASS + "\\s"  # a header's value loses surrounding white space on the way
    batch_write = {
        # anyOf, though only one can hold (an object or an array): generators filter oneOf
        "delta": {"anyOf": [_ref("DeltaMap"), _ref("DeltaOps")]},
        "actor": _ref("Id"),
        "lineage_id": _ref("SegmentId"),
        "delta_id": _ref("HeaderId"),
        "expected_version": {"type": "integer", "minimum": 0, "maximum": MAX_VERSION},
        "meta": {
            "description": "Kept with the delta, as a single write's other query parameters are",
            "type": "object",
            "maxProperties": 20,
            "propertyNames": {"maxLength": 64, "pattern": NO_NUL},
            "additionalProperties": {
                "anyOf": [
                    {"type": "string", "maxLength": 256, "pattern": NO_NUL},
                    {"type": "number", "minimum": -MAX_META_NUMBER, "maximum": MAX_META_NUMBER},
                ]
            },
        },
    }
    return {
        "Id": {"description": "An id (actor, idempotency key, …)", **id_schema(limits.max_id_length)},
        "SegmentId": {
            "description": "An id that is a segment of a URL path (tenant, state, task, lineage)",
            **id_schema(limits.max_id_length, segment=True),
        },
        "HeaderId": {
            "description": "An id sent as a header",
            "type": "string",
            "minLength": 1,
            "maxLength": limits.max_id_length,
            "pattern": f"^[^{header_class}](?:[^{_UNSEEN_CLASS}]*[^{header_class}])?$",
        },
        "Number": {
            "description": "A number with an absolute value below 10^18 and at most 18 decimal places: what every "
            "reader renders back exactly, in SQL and in Python alike.",
            "type": "number",
            "exclusiveMinimum": -1e18,
            "exclusiveMaximum": 1e18,
            "multipleOf": 1e-18,
        },
        "Text": {"description": "A string without NUL characters.", "type": "string", "pattern": NO_NUL},
        "Json": {
            "description": "Any JSON value PostgreSQL can store: no NUL character in its strings and keys.",
            "anyOf": [
                {"type": ["null", "boolean", "number"]},
                _ref("Text"),
                {"type": "array", "items": _ref("Json")},
                {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": _ref("Json")},
            ],
        },
        "Value": {
            "description": "A JSON value the service stores: numbers within range, strings and keys without NUL, "
            f"keys of at most {limits.max_key_length} characters. {depth}",
            "anyOf": [
                {"type": ["null", "boolean"]},
                _ref("Number"),
                _ref("Text"),
                {"type": "array", "items": _ref("Value")},
                {"type": "object", "propertyNames": key, "additionalProperties": _ref("Value")},
            ],
        },
        "PlainValue": {
            "description": "A value stored as it is: a Value with no key starting with $ at any depth (operators "
            'work only at the top of a path\'s value; {"$set": …} stores such keys literally).',
            "anyOf": [
                {"type": ["null", "boolean"]},
                _ref("Number"),
                _ref("Text"),
                {"type": "array", "items": _ref("PlainValue")},
                {"type": "object", "propertyNames": plain_key, "additionalProperties": _ref("PlainValue")},
            ],
        },
        "ExpectedValue": {
            "description": 'What a precondition expects at a path: a value, or {"$exists": true|false}.',
            "anyOf": [
                {"type": ["null", "boolean"]},
                _ref("Number"),
                _ref("Text"),
                {"type": "array", "items": _ref("Value")},
                {"type": "object", "propertyNames": plain_key, "additionalProperties": _ref("Value")},
                _operator("$exists", {"type": "boolean"}),
            ],
        },
        "DeltaPath": {
            "description": "A dotted path into the state: keys separated by single dots (`tasks.T1.status`), `\\.` a "
            "literal dot and `\\\\` a backslash, at most 64 keys; missing objects on the way are created. Top-level "
            "keys starting with $ are reserved.",
            "type": "string",
            "minLength": 1,
            "maxLength": limits.max_key_length,
            "pattern": _path_pattern(),
        },
        "PushOperand": {
            "description": 'What $push appends: a value, or {"$each": [values], "$slice": -N} (keep the last N).',
            "anyOf": [
                {"allOf": [_ref("Value"), {"not": {"type": "object", "required": ["$each"]}}]},
                {
                    "type": "object",
                    "required": ["$each"],
                    "properties": {
                        "$each": {"type": "array", "items": _ref("Value")},
                        "$slice": {
                            "anyOf": [{"type": "integer", "minimum": -1000000, "maximum": 1000000}, {"type": "null"}]
                        },
                    },
                    "additionalProperties": False,
                },
            ],
        },
        "DeltaChange": {
            "description": "What a delta does at a path: a plain value (set), or an operator object with exactly "
            "one operator (DESIGN §4.2). $addToSet and $pull are aliases of $add and $remove.",
            "oneOf": [
                _ref("PlainValue"),
                _operator("$set", _ref("Value")),
                _operator("$unset", {"const": True}),
                _operator("$inc", _ref("Number")),
                _operator("$max", {"anyOf": [_ref("Number"), _ref("Text")]}),
                _operator("$min", {"anyOf": [_ref("Number"), _ref("Text")]}),
                _operator("$add", _ref("Value")),
                _operator("$addToSet", _ref("Value")),
                _operator("$remove", _ref("Value")),
                _operator("$pull", _ref("Value")),
                _operator("$push", _ref("PushOperand")),
                _operator("$merge", {"type": "object", "propertyNames": key, "additionalProperties": _ref("Value")}),
            ],
        },
        "Expectations": {
            "description": "Preconditions: each path must hold the value, or exist or not; else the delta is a 409 "
            "and applies nothing.",
            "type": "object",
            "propertyNames": _ref("DeltaPath"),
            "additionalProperties": _ref("ExpectedValue"),
        },
        "DeltaMap": {
            "description": "A delta as a map (DESIGN §4.1): each key a dotted path, each value what to do there; "
            '"$expect" holds preconditions. At least one path, at most '
            f"{limits.max_paths}; paths may not overlap (one a prefix of another). {depth}",
            "type": "object",
            "minProperties": 1,
            "maxProperties": limits.max_paths + 1,
            "propertyNames": {"anyOf": [{"const": "$expect"}, _ref("DeltaPath")]},
            "properties": {"$expect": _ref("Expectations")},
            "additionalProperties": _ref("DeltaChange"),
            "not": {"required": ["$expect"], "maxProperties": 1},
            "examples": [
                {
                    "tasks.T1.status": "DONE",
                    "metrics.ctr": {"$inc": 0.2},
                    "$expect": {"tasks.T1.status": "IN_PROGRESS"},
                }
            ],
        },
        "DeltaOp": {
            "description": "One entry of a delta written as a list: `op` is the operator without its $, `value` its "
            'operand ({"path": p, "op": "set", "value": v} stores v literally; unset takes no value). '
            '{"path": p, "op": "expect", "value": v} (or "exists": true|false instead of value) is a precondition.',
            "oneOf": [
                _entry("set", _ref("Value")),
                _entry("unset", {"const": True}, required=False),
                _entry("inc", _ref("Number")),
                _entry(["max", "min"], {"anyOf": [_ref("Number"), _ref("Text")]}),
                _entry(["add", "remove"], _ref("Value")),
                _entry("push", _ref("PushOperand")),
                _entry("merge", {"type": "object", "propertyNames": key, "additionalProperties": _ref("Value")}),
                _entry("expect", _ref("ExpectedValue")),
                _entry("expect", {"type": "boolean"}, field="exists"),
            ],
        },
        "DeltaOps": {
            "description": "A delta as a list of operations, the same delta as a map: for callers that can only "
            "send objects of a fixed shape. Each path once, at least one entry that is no precondition, at most "
            f"{limits.max_paths} entries; paths may not overlap. {depth}",
            "type": "array",
            "minItems": 1,
            "maxItems": limits.max_paths,
            "items": _ref("DeltaOp"),
            "contains": {"type": "object", "properties": {"op": {"not": {"const": "expect"}}}},
            "examples": [
                [
                    {"path": "tasks.T1.status", "op": "set", "value": "DONE"},
                    {"path": "metrics.ctr", "op": "inc", "value": 0.2},
                    {"path": "tasks.T1.status", "op": "expect", "value": "IN_PROGRESS"},
                ]
            ],
        },
        "Delta": {
            "description": "A delta: a map of paths, or the same as a list of operations.",
            "oneOf": [_ref("DeltaMap"), _ref("DeltaOps")],
        },
        "Batch": {
            "description": "Writes to apply in one transaction, in order: each a delta with its own metadata.",
            "type": "array",
            "minItems": 1,
            "maxItems": limits.max_batch,
            "items": {
                "type": "object",
                "required": ["delta"],
                "properties": batch_write,
                "additionalProperties": False,
            },
        },
        "BatchResult": {
            "description": "Each write's result in order: what it would have answered alone (a write result, or "
            "the problem it met).",
            "type": "object",
            "required": ["tenant_id", "fsa_id", "atomic", "applied", "results"],
            "properties": {
                "tenant_id": {"type": "string"},
                "fsa_id": {"type": "string"},
                "atomic": {"type": "boolean"},
                "applied": {"type": "integer", "minimum": 0},
                "results": {"type": "array", "items": {"anyOf": [_ref("WriteResult"), _ref("Problem")]}},
            },
        },
        "JsonPatch": {
            "description": "An RFC 6902 JSON Patch: add and replace set a key, remove removes one (replace and remove "
            "expect it to exist), test is a precondition; an add to /-  appends to an array. Pointers name object "
            "keys (array elements are not addressed by index); move and copy are not supported. Each path once.",
            "type": "array",
            "minItems": 1,
            "maxItems": limits.max_paths,
            "items": {
                "oneOf": [
                    _patch_op(["add", "replace"], _ref("Value")),
                    _patch_op("remove", None),
                    _patch_op("test", _ref("ExpectedValue")),
                ]
            },
            "contains": {"type": "object", "properties": {"op": {"not": {"const": "test"}}}},
        },
        "MergePatch": {
            "description": "An RFC 7396 Merge Patch: each top-level key is set (a value), merged (an object) or "
            "removed (null).",
            "type": "object",
            "minProperties": 1,
            "maxProperties": limits.max_paths,
            "propertyNames": {**plain_key, "minLength": 1},
            "additionalProperties": _ref("Value"),
        },
        "State": {
            "description": f"A whole state: a JSON object; its top-level keys may not start with $. {depth}",
            "type": "object",
            "propertyNames": plain_key,
            "additionalProperties": _ref("Value"),
        },
    }


def _operator(name: str, operand: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": [name], "properties": {name: operand}, "additionalProperties": False}


def _entry(
    op: str | list[str], value: dict[str, Any], *, required: bool = True, field: str = "value"
) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["path", "op", field] if required else ["path", "op"],
        "properties": {
            "path": _ref("DeltaPath"),
            "op": {"const": op} if isinstance(op, str) else {"enum": op},
            field: value,
        },
        "additionalProperties": False,
    }


def _patch_op(op: str | list[str], value: dict[str, Any] | None) -> dict[str, Any]:
    # a JSON Pointer to an object key: keys become the dotted path's keys (~1 is /, ~0 is ~)
    pointer = {"type": "string", "pattern": r"^/[^/$\u0000][^/\u0000]*(?:/[^/\u0000]+){0,63}$"}
    schema: dict[str, Any] = {
        "type": "object",
        "required": ["op", "path"] if value is None else ["op", "path", "value"],
        "properties": {"op": {"const": op} if isinstance(op, str) else {"enum": op}, "path": pointer},
    }
    if value is not None:
        schema["properties"]["value"] = value
    return schema


def _slice_spec_pattern() -> str:
    """Slice specs (sms.parse_slice), comma-separated, at most 20: `alias:glob` (an alias or a
    collection, then a glob of members), or a dotted path whose second key may be a glob."""
    alias = r"[^.:\\,\x00 ][^.:\\,\x00]*:[^,\x00]*[^,\x00 ]"
    first = r"(?:[^.\\,*?:\x00 ]|\\[.\\])(?:[^.\\,*?:\x00]|\\[.\\])*"
    member = r"(?:[^.\\,\x00]|\\[.\\])+"
    rest = r"(?:[^.\\,*?\x00]|\\[.\\])+"
    part = f" *(?:{alias}|{first}(?:\\.{member}(?:\\.{rest}){{0,62}})?) *"
    return f"^{part}(?:,{part}){{0,19}}$"


SLICE_SPEC = _slice_spec_pattern()
# The where predicates the document promises to accept: a comparison of one member with a
# literal. PostgreSQL's SQL/JSON path grammar accepts far more (&&, ||, like_regex, methods, …).
WHERE = r'^@\.[A-Za-z_][A-Za-z0-9_]{0,62} (?:==|!=|<|<=|>|>=) (?:"[A-Za-z0-9 _.-]{0,64}"|-?[0-9]{1,9}|true|false|null)$'


# --- how routes document themselves ------------------------------------------------------------

# What each status means for this service, and the headers that come with it.
PROBLEMS: dict[int, str] = {
    400: "Malformed: a body that is not JSON, a bad query parameter, header or slice spec, an invalid where "
    "predicate, a Host this service does not serve (invalid-host)",
    401: "An API key is needed, or the one sent is unknown, revoked or expired (once any key exists)",
    403: "Not allowed: the key's scope is too low (insufficient-scope), a cross-origin write (forbidden-origin), or a "
    "client that is not on loopback while no key exists (protected-mode)",
    404: "Not found: nothing there, or a tenant the key does not name; a version, or the log after one, older than "
    "the state's compaction (history-compacted)",
    409: "Conflict with what is stored: the state is not at the expected version (version-conflict), a $expect "
    "precondition failed (expectation-failed), or an idempotency key was used for another delta",
    413: "A limit was exceeded: body size, number of paths, nesting, key length",
    415: "Writes take JSON (application/json or application/*+json)",
    422: "Semantically invalid: an invalid delta, id, rule or comment; an operator meeting a value of the wrong type "
    "(type-mismatch); a number out of range; a delta a policy refuses (policy-violation, with the violations)",
    429: "This key's rate limit is spent: retry after Retry-After seconds",
    503: "The database is unavailable, busy or took too long: retry after Retry-After seconds (a write answered so "
    "may have been applied: retry it with the same Idempotency-Key, and the answer tells)",
}
COMMON = (400, 401, 403, 404, 429, 503)  # any route a key is needed for: what app.api.auth.authorize answers
WRITES = (*COMMON, 413, 415)  # and a body's

_RETRY_AFTER = OpenAPIHeader(
    description="Seconds to wait before retrying", required=True, schema=Schema(type="string", pattern="^[0-9]+$")
)
_ETAG = OpenAPIHeader(
    description="The state's version, as an entity tag", schema=Schema(type="string", pattern='^"[0-9]+"$')
)
_HEADERS: dict[int, dict[str, OpenAPIHeader]] = {
    401: {
        "WWW-Authenticate": OpenAPIHeader(
            description='Bearer realm="sms"', required=True, schema=Schema(type="string", pattern="^Bearer ")
        )
    },
    409: {"ETag": _ETAG},
    422: {"ETag": _ETAG},
    429: {"Retry-After": _RETRY_AFTER},
    503: {"Retry-After": _RETRY_AFTER},
}


def ref(name: str) -> Reference:
    return Reference(ref=f"#/components/schemas/{name}")


def _content(media_type: str, schema: str | tuple[str, ...] | dict[str, Any]) -> dict[str, OpenAPIMediaType]:
    """Content of `media_type`: a component, one of several, or a schema written out."""
    return {media_type: OpenAPIMediaType(schema=_body_schema(schema))}


def problem_response(status: int) -> OpenAPIResponse:
    return OpenAPIResponse(
        description=PROBLEMS[status], content=_content(PROBLEM_JSON, "Problem"), headers=_HEADERS.get(status)
    )


def query(name: str, schema: dict[str, Any], description: str) -> Parameter:
    return Parameter(name=name, param_in="query", required=False, schema=schema, description=description)  # type: ignore[arg-type]


def header(name: str, schema: dict[str, Any], description: str) -> Parameter:
    return Parameter(name=name, param_in="header", required=False, schema=schema, description=description)  # type: ignore[arg-type]


# Parameters of route signatures that are ids, documented by the components that say what an id
# is within the running service's limits (Litestar would document them as any string).
ID_PARAMETERS = {
    "tenant_id": "SegmentId",
    "fsa_id": "SegmentId",
    "task_id": "SegmentId",
    "lineage_id": "SegmentId",
    "tenant": "SegmentId",
}


@dataclass(frozen=True)
class Answer:
    """A route's answer: the component(s) it is (one of), its media type and headers."""

    schema: str | tuple[str, ...] | dict[str, Any] | None
    description: str
    media_type: str = JSON
    headers: tuple[str, ...] = ()  # of "ETag", "Cache-Control"


def documented(
    answer: Answer,
    *,
    status: int = 200,
    body: Mapping[str, str | tuple[str, ...] | dict[str, Any]] | None = None,
    body_required: bool = True,
    problems: Iterable[int] = COMMON,
    parameters: Iterable[Parameter] = (),
    others: Mapping[int, OpenAPIResponse] | None = None,
    public: bool = False,
) -> type[Operation]:
    """An operation class (Litestar's `operation_class=`) that documents a route: its answer at
    `status`, its body (media type -> component(s)), the problem statuses it may answer with, the
    parameters its handler reads itself (Litestar documents those of its signature), other
    answers (such as a 304), and whether it is public (no key needed)."""
    success = OpenAPIResponse(
        description=answer.description,
        content=_content(answer.media_type, answer.schema) if answer.schema else None,
        headers={name: _SUCCESS_HEADERS[name] for name in answer.headers} or None,
    )
    request_body = (
        RequestBody(
            required=body_required,
            content={media_type: OpenAPIMediaType(schema=_body_schema(names)) for media_type, names in body.items()},
        )
        if body
        else None
    )
    responses = {
        str(status): success,
        **{str(code): response for code, response in (others or {}).items()},
        **{str(code): problem_response(code) for code in sorted(set(problems))},
    }
    extra_parameters = list(parameters)

    @dataclass
    class DocumentedOperation(Operation):
        def __post_init__(self) -> None:
            self.responses = responses
            self.request_body = request_body
            for parameter in self.parameters or []:
                if isinstance(parameter, Parameter) and parameter.name in ID_PARAMETERS:
                    parameter.schema = ref(ID_PARAMETERS[parameter.name])
            if extra_parameters:
                self.parameters = [*(self.parameters or []), *extra_parameters]
            if public:
                self.security = []

    return DocumentedOperation


def _body_schema(schema: str | tuple[str, ...] | dict[str, Any]) -> Any:
    if isinstance(schema, str):
        return ref(schema)
    if isinstance(schema, tuple):
        return Schema(one_of=[ref(name) for name in schema])
    return schema


_SUCCESS_HEADERS = {
    "ETag": OpenAPIHeader(
        description="The state's version, as an entity tag (If-None-Match with it gives a 304)",
        required=True,
        schema=Schema(type="string", pattern='^"[0-9]+"$'),
    ),
    "Cache-Control": OpenAPIHeader(description="How long the answer may be cached", schema=Schema(type="string")),
}


def not_modified() -> dict[int, OpenAPIResponse]:
    """The 304 of a conditional GET."""
    return {
        304: OpenAPIResponse(
            description="Not modified: the state is still at the version If-None-Match names",
            headers={"ETag": _SUCCESS_HEADERS["ETag"]},
        )
    }


def write_parameters() -> list[Parameter]:
    """What a write reads besides its body (app.domain.delta.write_meta). Documented once each: the
    query parameters the original clients send, and the standard headers for idempotency and
    versions. (Also read, when those are absent: `X-Actor`, `X-Lineage-Id`, and `delta_id` and
    `expected_version` as query parameters. Any other query parameter — at most 20, names up to
    64 and values up to 256 characters — is kept with the delta as meta.)"""
    meta = {"type": "string", "maxLength": 256, "pattern": NO_NUL}
    return [
        query("actor", _ref("Id"), "Who writes (a key that names an actor writes as that actor)"),
        query("lineage_id", _ref("SegmentId"), "The lineage (span) the write belongs to"),
        query("aml_level", meta, "The AML level the writer claims (a whole number; anything else is kept as meta)"),
        query("pillar", meta, "Kept with the delta as meta"),
        header("Idempotency-Key", _ref("HeaderId"), "A retry with the same key applies nothing twice"),
        header("If-Match", {"type": "string", "pattern": '^(W/)?"*[0-9]{1,15}"*$'}, 'Apply only at this version: "41"'),
        header(
            "traceparent",
            {
                "type": "string",
                "pattern": "^(?:[0-9a-fA-F]{2}-[0-9a-fA-F]{32}-[0-9a-fA-F]{16}-[0-9a-fA-F]{2})?$",
                "examples": ["00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"],
            },
            "W3C trace context (ignored when empty): its trace id is the lineage when none is given",
        ),
    ]


SECURITY_SCHEMES = {
    "bearer": SecurityScheme(
        type="http", scheme="bearer", description="An API key (`sms keys create`): Authorization: Bearer sms_k_…"
    ),
    "apiKey": SecurityScheme(type="apiKey", name="X-API-Key", security_scheme_in="header", description="The same key"),
}


# What the Rule Struct cannot say about one rule (sms.check_rule): it constrains something, `**`
# only ends a path, and with `**` only required, immutable and max_change apply.
RULE_CONSTRAINTS = {
    "anyOf": [{"required": [name]} for name in ("min", "max", "enum", "type", "required", "immutable", "max_change")],
    "if": {"properties": {"path": {"pattern": r"(^|\.)\*\*$"}}},
    "then": {"not": {"anyOf": [{"required": [name]} for name in ("min", "max", "enum", "type")]}},
}


def add_components(app: Litestar, settings: Settings) -> None:
    """Adds the schemas, sized by `settings.limits`, and the security schemes to the app's
    OpenAPI document. Until a key exists (auth "auto") a key is optional: protected mode serves
    loopback clients without one."""
    openapi = app.openapi_schema
    _, generated = msgspec.json.schema_components(STRUCTS, ref_template="#/components/schemas/{name}")
    schemas = {**generated, **value_schemas(settings.limits)}
    schemas["Rule"] = {**schemas["Rule"], **RULE_CONSTRAINTS}
    components = openapi.components if isinstance(openapi.components, Components) else Components()
    components.schemas = {**(components.schemas or {}), **schemas}  # type: ignore[dict-item]
    components.security_schemes = dict(SECURITY_SCHEMES)  # type: ignore[arg-type]
    openapi.components = components
    required = settings.auth == "required" and not settings.insecure_no_auth
    openapi.security = [{"bearer": []}, {"apiKey": []}, *([] if required else [{}])]
    if settings.compat == V2:
        openapi.info.description = f"{openapi.info.description or ''} {V2_NOTE}".strip()


# What the document says under SMS_COMPAT=v2, where two answers differ from the schemas (app.api.compat).
V2_NOTE = (
    "This service answers in the original second-generation contract (SMS_COMPAT=v2): GET /state/{tenant_id}/"
    "{fsa_id} is the state's own members plus lineage_version, and a write to a state that is refused (409 or 422) "
    'is a 200 {"success": false, "message", "version"} with the problem\'s other members; the schemas describe '
    "the default contract."
)
