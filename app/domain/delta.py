"""Deltas as they arrive: limits and shape checked early, other formats turned into the wire format.

The merge itself (every operator, every precondition) lives in SQL (`sms.apply_delta`); this
module never re-implements it. JSON bodies are forwarded to PostgreSQL as the text that was sent,
so numbers keep their exact decimal value.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.domain import jsontext
from app.errors import invalid, invalid_id, malformed, too_large
from app.settings import Limits

# Idempotency keys that are not UUIDs are mapped to one deterministically.
IDEMPOTENCY_NAMESPACE = uuid.UUID("5b0f6a52-3f0e-4d3c-9a55-3c1f3e1f5a10")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


def decode_body(body: bytes, limits: Limits) -> Any:
    """Parse a JSON body within the limits; numbers become Decimal so nothing is rounded."""
    if len(body) > limits.max_body_bytes:
        raise too_large(f"the body is {len(body)} bytes; at most {limits.max_body_bytes} are allowed")
    if not body.strip():
        raise malformed("the body is empty; send a JSON object")
    try:
        value = jsontext.decode(body)
    except UnicodeDecodeError:
        raise malformed("the body is not valid UTF-8") from None
    except RecursionError:
        raise invalid(f"the body is nested more than {limits.max_depth} levels deep") from None
    except msgspec.DecodeError as exc:
        if "depth" in str(exc) or "recursion" in str(exc):
            raise invalid(f"the body is nested more than {limits.max_depth} levels deep") from None
        raise malformed(f"the body is not valid JSON: {exc}") from None
    depth = _depth(value, limits.max_depth)
    if depth > limits.max_depth:
        raise invalid(f"the body is nested more than {limits.max_depth} levels deep")
    return value


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


def check_delta(delta: Any, limits: Limits) -> None:
    """The shape every delta must have before it is worth a round trip."""
    if not isinstance(delta, dict):
        raise invalid(f"a delta must be a JSON object of paths, not {_json_type(delta)}")
    paths = [key for key in delta if key != "$expect"]
    expect = delta.get("$expect")
    if isinstance(expect, dict):
        paths += list(expect)
    if len(paths) > limits.max_paths:
        raise too_large(f"the delta has {len(paths)} paths; at most {limits.max_paths} are allowed")
    for path in paths:
        if len(path) > limits.max_key_length:
            raise invalid(
                f"a path is {len(path)} characters long; at most {limits.max_key_length} are allowed",
                path=path[:100],
            )


def check_document(document: Any, limits: Limits) -> None:
    """A full state for replacement: a JSON object with keys within the limits."""
    if not isinstance(document, dict):
        raise invalid(f"a state must be a JSON object, not {_json_type(document)}")
    for key in document:
        if len(key) > limits.max_key_length:
            raise invalid(f"a key is {len(key)} characters long; at most {limits.max_key_length} are allowed")


def encode(value: Any) -> str:
    """JSON text of a decoded value, with Decimals written back as exact numbers."""
    return jsontext.encode(value).decode()


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


def escape_key(key: str) -> str:
    """A key as one segment of a dotted path (`\\.` is a literal dot, `\\\\` a backslash)."""
    return key.replace("\\", "\\\\").replace(".", "\\.")


def from_merge_patch(patch: Any) -> dict[str, Any]:
    """RFC 7396 Merge Patch as a delta: each top-level key is set, merged or removed."""
    if not isinstance(patch, dict):
        raise invalid("a merge patch for a state must be a JSON object")
    delta: dict[str, Any] = {}
    for key, value in patch.items():
        if value is None:
            delta[escape_key(key)] = {"$unset": True}
        elif isinstance(value, dict):
            delta[escape_key(key)] = {"$merge": value}
        else:
            delta[escape_key(key)] = {"$set": value}
    return delta


def from_json_patch(patch: Any) -> dict[str, Any]:
    """RFC 6902 JSON Patch as a delta.

    add/replace set a path, remove unsets it, `test` becomes a `$expect` precondition; replace and
    remove also expect the path to exist, as the RFC requires. An add to `/-` appends. Array
    elements are not addressable by index, and move/copy are not supported: both are 422.
    """
    if not isinstance(patch, list):
        raise invalid("a JSON Patch must be an array of operations")
    delta: dict[str, Any] = {}
    expect: dict[str, Any] = {}
    for index, operation in enumerate(patch):
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise invalid(f"JSON Patch operation {index} must be an object with a string path")
        kind = operation.get("op")
        keys = _pointer_keys(operation["path"], index)
        if kind in ("add", "replace", "test") and "value" not in operation:
            raise invalid(f"JSON Patch operation {index} ({kind}) needs a value")
        if kind == "add" and len(keys) > 1 and keys[-1] == "-":
            path = ".".join(escape_key(k) for k in keys[:-1])
            _put(delta, path, {"$push": operation["value"]}, index)
            continue
        path = ".".join(escape_key(k) for k in keys)
        if kind == "add":
            _put(delta, path, {"$set": operation["value"]}, index)
        elif kind == "replace":
            expect.setdefault(path, {"$exists": True})
            _put(delta, path, {"$set": operation["value"]}, index)
        elif kind == "remove":
            expect.setdefault(path, {"$exists": True})
            _put(delta, path, {"$unset": True}, index)
        elif kind == "test":
            expect[path] = operation["value"]
        else:
            raise invalid(f"JSON Patch operation {index}: op {kind!r} is not supported (add, remove, replace, test)")
    if expect:
        delta["$expect"] = expect
    return delta


def _pointer_keys(pointer: str, index: int) -> list[str]:
    if not pointer.startswith("/"):
        raise invalid(f"JSON Patch operation {index}: path {pointer!r} must start with / and name a key")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def _put(delta: dict[str, Any], path: str, op: Any, index: int) -> None:
    if path in delta:
        raise invalid(f"JSON Patch operation {index} addresses {path!r} a second time", path=path)
    delta[path] = op


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


def write_meta(params: dict[str, str], headers: dict[str, str], limits: Limits) -> WriteMeta:
    """Metadata from query parameters, or else headers (DESIGN §4.1). Header names are lower case."""
    actor = _given(params, "actor", headers, "x-actor")
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
    for name, value in (("actor", actor), ("lineage_id", lineage_id), ("delta_id", key)):
        if value is not None and (not 0 < len(value) <= limits.max_id_length or _CONTROL.search(value)):
            raise invalid_id(
                f"{name} must be 1 to {limits.max_id_length} characters without control characters", field=name
            )
    meta = {k: v for k, v in params.items() if k not in KNOWN_PARAMS}
    if len(meta) > MAX_META_PARAMS or any(len(k) > 64 or len(v) > 256 for k, v in meta.items()):
        raise too_large(f"at most {MAX_META_PARAMS} extra query parameters of up to 256 characters are kept")
    return WriteMeta(
        actor=actor,
        lineage_id=lineage_id,
        delta_id=idempotency_uuid(key) if key else None,
        expected_version=_version(expected) if expected is not None else None,
        trace_id=trace_id,
        parent_id=parent_id,
        meta=meta,
    )


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
    try:
        version = int(raw)
    except ValueError:
        raise malformed(f"a version must be a whole number, not {raw[:40]!r}") from None
    if version < 0 or version > 2**62:
        raise malformed("a version must be between 0 and 2^62")
    return version
