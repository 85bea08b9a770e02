"""Deltas as they arrive: limits and shape checked early, other formats turned into the wire format.

The merge itself (every operator, every precondition) lives in SQL (`sms.apply_delta`); this
module never re-implements it. JSON bodies are forwarded to PostgreSQL as the text that was sent,
so numbers keep their exact decimal value.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgspec

from app.domain import jsontext
from app.domain.ids import check_id
from app.errors import Problem, invalid, malformed, too_large
from app.settings import Limits

# Idempotency keys that are not UUIDs are mapped to one deterministically.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f6a52-3f0e-4d3c-9a55-3c1f3e1f5a10")
_DIGITS = re.compile(r"[0-9]+")
MAX_VERSION = 2**53 - 1  # the largest integer every JSON reader (JavaScript's included) holds exactly
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


SMALL_BODY_BYTES = 1024 * 1024  # bodies that are not state (rules, comments, keys, aliases)
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"


def decode_body(body: bytes, limits: Limits, max_bytes: int = SMALL_BODY_BYTES) -> Any:
    """Parse a small JSON body (rules, a comment, a key, an alias) within the limits; numbers
    become Decimal so nothing is rounded. State bodies go through `delta_text`/`document_text`."""
    if len(body) > max_bytes:
        raise too_large(f"the body is {len(body)} bytes; at most {max_bytes} are allowed here")
    value = _decode(body, Any, "a JSON value")
    if _depth(value, limits.max_depth) > limits.max_depth:
        raise invalid(f"the body is nested more than {limits.max_depth} levels deep")
    return value


def _decode(body: bytes, kind: Any, expected: str) -> Any:
    """`body` decoded as `kind`, or the problem a client should get."""
    if not body.strip():
        raise malformed(f"the body is empty; send {expected}")
    try:
        return msgspec.json.decode(body, type=kind, dec_hook=None) if kind is not Any else jsontext.decode(body)
    except RecursionError:
        raise invalid("the body is nested too deeply") from None
    except msgspec.ValidationError as exc:
        raise invalid(f"send {expected}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise malformed(f"the body is not valid JSON: {exc}") from None


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a decoded JSON value, stopping once past `limit`."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def delta_text(body: bytes, media_type: str, limits: Limits) -> str:
    """The request body as a delta in the wire format (DESIGN §4.1), as JSON text for
    sms.apply_delta: the delta map itself, or a list of operations (`DeltaOp`), a JSON Patch or a
    Merge Patch turned into one.

    Only the top level is read here; values pass through as the bytes that were sent — exact
    numbers, and no Python objects for what may be megabytes of nesting, so no body holds the
    event loop for long. PostgreSQL checks the values (sms.check_value: nesting, keys at every
    depth, numbers)."""
    _check_size(body, limits)
    if media_type == JSON_PATCH:
        return _from_json_patch(_decode(body, list[PatchOperation], "a JSON Patch: an array of operations"), limits)
    if media_type == MERGE_PATCH:
        return _from_merge_patch(_decode(body, dict[str, msgspec.Raw], "a merge patch: a JSON object"), limits)
    if body.lstrip()[:1] == b"[":
        return _from_ops(_decode(body, list[DeltaOp], "a delta as a list of operations"), limits)
    top = _decode(body, dict[str, msgspec.Raw], "a delta: a JSON object of paths")
    paths = [key for key in top if key != "$expect"]
    if "$expect" in top:
        paths += list(_decode(bytes(top["$expect"]), dict[str, msgspec.Raw], "$expect as an object of paths"))
    _check_paths(paths, limits)
    return _text(body)


def document_text(body: bytes, limits: Limits) -> str:
    """A whole state for replacement, as JSON text: a JSON object whose keys are within the limits
    (its values are checked by PostgreSQL, as a delta's are)."""
    _check_size(body, limits)
    keys = _decode(body, dict[str, msgspec.Raw], "a state: a JSON object")
    for key in keys:
        if len(key) > limits.max_key_length:
            raise invalid(f"a key is {len(key)} characters long; at most {limits.max_key_length} are allowed")
    return _text(body)


def _text(body: bytes) -> str:
    try:
        return body.decode()
    except UnicodeDecodeError:
        raise malformed("the body is not valid UTF-8") from None


def _check_size(body: bytes, limits: Limits) -> None:
    """Bytes, and values: every value costs PostgreSQL a few microseconds to parse, check and
    store, so their number — counted from above, as [ { and , characters, in a few milliseconds —
    keeps the work on a body well within the statement timeout: a definite answer, not a 503."""
    if len(body) > limits.max_body_bytes:
        raise too_large(f"the body is {len(body)} bytes; at most {limits.max_body_bytes} are allowed")
    values = body.count(b"[") + body.count(b"{") + body.count(b",")
    if values > limits.max_values:
        raise too_large(f"the body holds about {values} JSON values; at most {limits.max_values} are allowed")


def _check_paths(paths: list[str], limits: Limits) -> None:
    if len(paths) > limits.max_paths:
        raise too_large(f"the delta has {len(paths)} paths; at most {limits.max_paths} are allowed")
    for path in paths:
        if len(path) > limits.max_key_length:
            raise invalid(
                f"a path is {len(path)} characters long; at most {limits.max_key_length} are allowed",
                path=path[:100],
            )


def escape_key(key: str) -> str:
    """A key as one segment of a dotted path (`\\.` is a literal dot, `\\\\` a backslash)."""
    return key.replace("\\", "\\\\").replace(".", "\\.")


def _delta(entries: dict[str, bytes], limits: Limits) -> str:
    """A delta's JSON text from its paths and their operations' JSON (values stay as sent)."""
    _check_paths([path for path in entries if path != "$expect"], limits)
    return _text(b"{" + b",".join(jsontext.encode(path) + b":" + op for path, op in entries.items()) + b"}")


def _op(operator: str, raw: bytes) -> bytes:
    return b'{"' + operator.encode() + b'":' + raw + b"}"


def _from_merge_patch(patch: dict[str, msgspec.Raw], limits: Limits) -> str:
    """RFC 7396 Merge Patch as a delta: each top-level key is set, merged or removed."""
    delta: dict[str, bytes] = {}
    for key, raw in patch.items():
        value = bytes(raw).strip()
        if value == b"null":
            delta[escape_key(key)] = b'{"$unset":true}'
        elif value.startswith(b"{"):
            delta[escape_key(key)] = _op("$merge", value)
        else:
            delta[escape_key(key)] = _op("$set", value)
    return _delta(delta, limits)


class PatchOperation(msgspec.Struct):
    """One RFC 6902 operation; its value stays the JSON that was sent."""

    op: str
    path: str
    value: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET


def _from_json_patch(patch: list[PatchOperation], limits: Limits) -> str:
    """RFC 6902 JSON Patch as a delta.

    add/replace set a path, remove unsets it, `test` becomes a `$expect` precondition; replace and
    remove also expect the path to exist, as the RFC requires. An add to `/-` appends. Array
    elements are not addressable by index, and move/copy are not supported: both are 422.
    """
    delta: dict[str, bytes] = {}
    expect: dict[str, bytes] = {}
    for index, operation in enumerate(patch):
        kind = operation.op
        keys = _pointer_keys(operation.path, index)
        if kind in ("add", "replace", "test") and operation.value is msgspec.UNSET:
            raise invalid(f"JSON Patch operation {index} ({kind}) needs a value")
        value = bytes(operation.value) if operation.value is not msgspec.UNSET else b""
        where = f"JSON Patch operation {index}"
        if kind == "add" and len(keys) > 1 and keys[-1] == "-":
            _put(delta, ".".join(escape_key(k) for k in keys[:-1]), _op("$push", value), where)
            continue
        path = ".".join(escape_key(k) for k in keys)
        if kind == "add":
            _put(delta, path, _op("$set", value), where)
        elif kind == "replace":
            expect.setdefault(path, b'{"$exists":true}')
            _put(delta, path, _op("$set", value), where)
        elif kind == "remove":
            expect.setdefault(path, b'{"$exists":true}')
            _put(delta, path, b'{"$unset":true}', where)
        elif kind == "test":
            expect[path] = value
        else:
            raise invalid(f"JSON Patch operation {index}: op {kind!r} is not supported (add, remove, replace, test)")
    if expect:
        delta["$expect"] = b"{" + b",".join(jsontext.encode(p) + b":" + v for p, v in expect.items()) + b"}"
    return _delta(delta, limits)


def _pointer_keys(pointer: str, index: int) -> list[str]:
    if not pointer.startswith("/"):
        raise invalid(f"JSON Patch operation {index}: path {pointer!r} must start with / and name a key")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _put(delta: dict[str, bytes], path: str, op: bytes, where: str) -> None:
    if path in delta:
        raise invalid(f"{where} addresses {path!r} a second time", path=path)
    delta[path] = op


# The operators of the ops-list form, as the delta map writes them.
OPERATORS = {
    "set": "$set",
    "unset": "$unset",
    "inc": "$inc",
    "max": "$max",
    "min": "$min",
    "add": "$add",
    "remove": "$remove",
    "push": "$push",
    "merge": "$merge",
}


class DeltaOp(msgspec.Struct, forbid_unknown_fields=True):
    """One entry of a delta written as a list, for callers that can only send objects of a fixed
    shape: `{"path": "metrics.ctr", "op": "inc", "value": 0.2}` is the map's `{"metrics.ctr":
    {"$inc": 0.2}}`. `value` is the operator's operand (set stores it literally, unset takes none
    or true); `{"path": p, "op": "expect", "value": v}` or `{"path": p, "op": "expect", "exists":
    false}` is a precondition, the map's `"$expect": {p: v}` or `{p: {"$exists": false}}`. The
    value stays the JSON that was sent."""

    path: str
    op: Literal["set", "unset", "inc", "max", "min", "add", "remove", "push", "merge", "expect"]
    value: msgspec.Raw | msgspec.UnsetType = msgspec.UNSET
    exists: bool | msgspec.UnsetType = msgspec.UNSET


def _from_ops(entries: list[DeltaOp], limits: Limits) -> str:
    """The ops-list form as a delta map: each path once, each precondition once."""
    _check_paths([entry.path for entry in entries], limits)
    delta: dict[str, bytes] = {}
    expect: dict[str, bytes] = {}
    for index, entry in enumerate(entries):
        where = f"delta entry {index} ({entry.op} {entry.path[:100]!r})"
        if entry.path.startswith("$"):
            raise invalid(f"{where}: paths starting with $ are reserved", path=entry.path[:100])
        if entry.op == "expect":
            if (entry.value is msgspec.UNSET) == (entry.exists is msgspec.UNSET):
                raise invalid(f"{where}: expect takes either a value or exists", path=entry.path[:100])
            if entry.exists is msgspec.UNSET:
                expected = bytes(entry.value)
            else:
                expected = b'{"$exists":true}' if entry.exists else b'{"$exists":false}'
            _put(expect, entry.path, expected, where)
            continue
        if entry.exists is not msgspec.UNSET:
            raise invalid(f"{where}: exists goes only with op expect", path=entry.path[:100])
        if entry.op == "unset":
            if entry.value is not msgspec.UNSET and bytes(entry.value).strip() != b"true":
                raise invalid(f"{where}: unset takes no value (or true)", path=entry.path[:100])
            operand = b"true"
        elif entry.value is msgspec.UNSET:
            raise invalid(f"{where}: {entry.op} needs a value", path=entry.path[:100])
        else:
            operand = bytes(entry.value)
        _put(delta, entry.path, _op(OPERATORS[entry.op], operand), where)
    if expect:
        delta["$expect"] = b"{" + b",".join(jsontext.encode(p) + b":" + v for p, v in expect.items()) + b"}"
    return _delta(delta, limits)


@dataclass(frozen=True)
class WriteMeta:
    """Who writes, in which lineage, under which idempotency key and version expectation."""

    actor: str | None = None
    lineage_id: str | None = None
    delta_id: uuid.UUID | None = None
    expected_version: int | None = None
    trace_id: str | None = None
    parent_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)  # kept with the delta (pillar, aml_level, …)


# Query parameters with a meaning of their own; any other one is kept in `meta` (pillar, aml_level, …).
KNOWN_PARAMS = {"actor", "lineage_id", "delta_id", "expected_version", "tenant_id", "fsa_id"}
MAX_META_PARAMS = 20


def claimed_actor(params: dict[str, str], headers: dict[str, str], limits: Limits) -> str | None:
    """The actor a request names: its `actor` parameter, else its X-Actor header; checked."""
    actor = _given(params, "actor", headers, "x-actor")
    if actor is not None:
        check_id("actor", actor, limits.max_id_length)
    return actor


def write_meta(params: dict[str, str], headers: dict[str, str], limits: Limits) -> WriteMeta:
    """Metadata from query parameters, or else headers (DESIGN §4.1). Header names are lower case."""
    actor = claimed_actor(params, headers, limits)
    lineage_id = _given(params, "lineage_id", headers, "x-lineage-id")
    trace_id = parent_id = None
    traceparent = headers.get("traceparent")
    if traceparent:
        match = _TRACEPARENT.match(traceparent.strip().lower())
        if match is None:
            raise malformed("traceparent must be W3C trace context: 00-<32 hex>-<16 hex>-<2 hex>")
        trace_id, parent_id = match.groups()
        lineage_id = trace_id if lineage_id is None else lineage_id
    key = _given(params, "delta_id", headers, "idempotency-key")
    expected = _given(params, "expected_version", headers, "if-match")
    if expected is not None and "expected_version" not in params:
        expected = _if_match(expected)
    for name, value in (("lineage_id", lineage_id), ("delta_id", key)):
        if value is not None:
            # a lineage is read back at /lineage/{lineage_id}: it must be a path segment
            check_id(name, value, limits.max_id_length, segment=name == "lineage_id")
    meta = {k: v for k, v in params.items() if k not in KNOWN_PARAMS}
    _check_kept(meta)
    return WriteMeta(
        actor=actor,
        lineage_id=lineage_id,
        delta_id=idempotency_uuid(key) if key else None,
        expected_version=_version(expected) if expected is not None else None,
        trace_id=trace_id,
        parent_id=parent_id,
        meta=meta,
    )


# The time a heartbeat records, as sms.heartbeat writes it: ISO 8601 in UTC, to the microsecond.
HEARTBEAT_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def heartbeat_delta(agent: str, seen: str, meta: WriteMeta, actor: str | None) -> tuple[str, WriteMeta]:
    """A heartbeat as a delta, the one sms.heartbeat applies: agents_online.<agent> takes the later
    of its time and `seen` (HEARTBEAT_TIME text: $max of it never moves a time back), written by
    `actor` (the key's) or else the agent, its meta marked as a heartbeat. As a delta it can share a
    busy state's transaction with other deltas (group commit) instead of taking a turn of its own.
    Like sms.heartbeat it takes no idempotency key and no expected version: a $max repeats safely."""
    delta = {f"agents_online.{escape_key(agent)}": {"$max": seen}}
    beat = replace(
        meta, actor=actor or agent, delta_id=None, expected_version=None, meta=meta.meta | {"heartbeat": True}
    )
    return jsontext.encode(delta).decode(), beat


def _check_kept(meta: dict[str, str]) -> None:
    """What a write keeps as meta: a few short strings (NUL: ids say so themselves, as 422s)."""
    if len(meta) > MAX_META_PARAMS or any(len(k) > 64 or len(v) > 256 for k, v in meta.items()):
        raise malformed(f"at most {MAX_META_PARAMS} extra query parameters of up to 256 characters are kept")
    if any("\x00" in name or "\x00" in value for name, value in meta.items()):
        raise malformed("query parameters kept as meta may not hold NUL characters")


def _given(params: dict[str, str], param: str, headers: dict[str, str], header: str) -> str | None:
    """The query parameter if present (even empty, which is then refused), else the header."""
    return params[param] if param in params else headers.get(header)


def idempotency_uuid(key: str) -> uuid.UUID:
    """The delta id for an idempotency key: the key itself when it is a UUID."""
    try:
        return uuid.UUID(key)
    except ValueError:
        return uuid.uuid5(IDEMPOTENCY_NAMESPACE, key)


def _if_match(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


def _version(raw: str) -> int:
    """A version as written in a query parameter or If-Match: decimal digits, nothing else."""
    if not _DIGITS.fullmatch(raw):
        raise malformed(f"a version must be a whole number, not {raw[:40]!r}")
    version = int(raw)
    if version > MAX_VERSION:
        raise malformed(f"a version is at most {MAX_VERSION}")
    return version


class BatchWrite(msgspec.Struct, forbid_unknown_fields=True):
    """One write of a batch (POST /state/{t}/{f}/deltas): a delta, as a map or a list of operations,
    and its own metadata, named as a single write's query parameters are (a member is given or
    left out, never null)."""

    delta: msgspec.Raw
    actor: str | msgspec.UnsetType = msgspec.UNSET
    lineage_id: str | msgspec.UnsetType = msgspec.UNSET
    delta_id: str | msgspec.UnsetType = msgspec.UNSET
    expected_version: int | float | msgspec.UnsetType = msgspec.UNSET  # whole: JSON Schema counts 7.0 as one
    meta: dict[str, str | int | float] = {}


MAX_META_NUMBER = 10**15  # a number a batch write keeps as meta (stored as its text, as query parameters are)

# The request headers that a batch's writes share (each write names its own idempotency key and
# expected version, so Idempotency-Key and If-Match do not apply to a batch).
BATCH_HEADERS = ("x-actor", "x-lineage-id", "traceparent")


def batch_writes(body: bytes, headers: dict[str, str], limits: Limits) -> list[tuple[str, WriteMeta]]:
    """A batch's writes, each as (delta text, metadata), checked as a single write's are; a problem
    names the write it concerns (`index`, from 0)."""
    _check_size(body, limits)
    writes = _decode(body, list[BatchWrite], 'a batch: a JSON array of {"delta": …} with each write\'s metadata')
    if not writes:
        raise invalid("a batch holds at least one write")
    if len(writes) > limits.max_batch:  # the schema's maxItems: an invalid batch, as JSON Schema says
        raise invalid(f"the batch holds {len(writes)} writes; at most {limits.max_batch} are allowed")
    shared = {name: headers[name] for name in BATCH_HEADERS if name in headers}
    return [_batch_write(index, write, shared, limits) for index, write in enumerate(writes)]


def _batch_write(index: int, write: BatchWrite, headers: dict[str, str], limits: Limits) -> tuple[str, WriteMeta]:
    named = {"actor": write.actor, "lineage_id": write.lineage_id, "delta_id": write.delta_id}
    try:
        if write.expected_version is not msgspec.UNSET:
            version = write.expected_version
            if isinstance(version, float) and not version.is_integer():
                raise malformed(f"a version must be a whole number, not {version}")
            named["expected_version"] = str(int(version))
        meta = write_meta({k: v for k, v in named.items() if isinstance(v, str)}, headers, limits)
        if any(not isinstance(value, str) and abs(value) > MAX_META_NUMBER for value in write.meta.values()):
            raise malformed(f"a number kept as meta is at most {MAX_META_NUMBER} in absolute value")
        kept = {name: str(value) for name, value in write.meta.items()}  # as a single write's query parameters
        _check_kept(kept)
        return delta_text(bytes(write.delta), "application/json", limits), replace(meta, meta=kept)
    except Problem as problem:
        problem.detail = f"write {index}: {problem.detail}"
        problem.extra["index"] = index
        raise
