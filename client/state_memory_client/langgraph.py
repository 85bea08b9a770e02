"""A LangGraph store (`BaseStore`) backed by the State Memory Service (DESIGN §13).

    from state_memory_client.langgraph import StateMemoryStore

    store = StateMemoryStore("http://127.0.0.1:8080", tenant="acme")
    graph = builder.compile(store=store)

Where items live: a namespace is one state, and its items are the members of one collection of
it, named after the namespace's last label. `("users", "42", "memories")` is the state
`langgraph:users:42:memories` (the store's `prefix`, then the labels, each after a colon) and
its collection `memories`; the item "m1" is the member `memories.m1`:

    {"value": {...the item's value...}, "created_at": "2026-…+00:00", "updated_at": "2026-…+00:00"}

The namespace is read back from the state's id alone, so listing namespaces and searching under
a prefix cost one listing of the tenant's states (by id prefix), never a read of whole states.
Characters that the service gives a meaning to — `/` in ids, `.` and `\\` in paths, `,` `*` `?`
`:` and spaces in slice specs, `%` itself, control and invisible characters — are written as
`%XX` (UTF-8, as in URLs) in labels and keys; other text stays as it is, so other agents read
the store's states as they read any state (`memories:*`, `where=@.value.topic == "x"`).

What it does as LangGraph's InMemoryStore does: a batch reads before it writes (its gets,
searches and listings see the store as it was before the batch's puts), and of several puts to
one key in a batch the last wins. A put keeps the item's `created_at` and moves its `updated_at`
(never back); a delete removes the member. Each put is one delta in the state's log, with the
LangGraph node as its actor and the run's id (the `run_id` the graph was invoked with) as its
lineage, or outside a graph run the store's `actor` and no lineage; the puts of a batch to one
state go as one atomic batch request. A search's `filter` ({"field": value}, nested objects and
arrays by value, and `$eq` `$ne` `$gt` `$gte` `$lt` `$lte`) becomes the slice's `where` predicate,
so the service filters; results come most recently updated first. Semantic search is not
supported: like InMemoryStore without an index, a search ignores its `query` (and a put its
`index`), and items have no score. TTLs are not supported either (`put(..., ttl=…)` raises).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import threading
from collections import defaultdict
from collections.abc import Awaitable, Iterable
from concurrent.futures import Future
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from urllib.parse import unquote

from langgraph.config import get_config
from langgraph.runtime import get_runtime
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    validate_op_namespace,
)

from state_memory_client.client import StateMemoryClient

MAX_FSA_BYTES = 128  # the service's longest state id
MAX_SPECS = 20  # slice specs in one slice request
MAX_SPEC_CHARS = 2000  # characters of one slice request's specs, commas included
MAX_BATCH = 64  # writes in one batch request (the service's default SMS_MAX_BATCH)
CONCURRENT_READS = 8  # slice reads in flight at once, however many states a search covers

# What is written %XX in labels and keys: the escape itself, what ids (/) and paths (. \) give a
# meaning to, what slice specs do (, * ? : and spaces, which end a spec), and the characters the
# service refuses in ids (control, invisible and bidirectional ones).
_SPECIAL = re.compile(
    "[%/.\\\\,*?:\\s\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f"
    "\ufeff\ufff9-\ufffb]"
)


def _escape(text: str) -> str:
    """`text` as a label of a state id or a key of a path: its special characters as %XX."""
    return _SPECIAL.sub(lambda match: "".join(f"%{byte:02X}" for byte in match.group().encode()), text)


def _unescape(text: str) -> str:
    return unquote(text)


def _now() -> str:
    """The time as fixed-width UTC ISO 8601 text, so that the service's $min and $max on these
    strings keep the earliest and the latest time."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


class StateMemoryStore(BaseStore):
    """LangGraph's `BaseStore` on a running State Memory Service (see the module's docstring for
    where items live and what each operation does).

    `tenant` is the tenant of the store's states, `prefix` starts their ids (several stores can
    share a tenant under different prefixes), `actor` is the actor of puts made outside a graph
    run; `client_options` go to `StateMemoryClient` (`api_key`, `timeout`, `retries`, …).

    Requests run on the store's own event loop in a thread of its own, so `batch` works from any
    thread and `abatch` from any event loop; `close()` (or `with`) ends it.
    """

    def __init__(
        self, base_url: str, tenant: str, *, prefix: str = "langgraph", actor: str = "langgraph", **client_options: Any
    ) -> None:
        if not prefix or _escape(prefix) != prefix:
            raise ValueError(f"prefix must be non-empty, with no character that labels escape (/ . : % …): {prefix!r}")
        self.tenant = tenant
        self.prefix = prefix
        self.actor = actor
        self._client = StateMemoryClient(base_url, numbers="float", **client_options)
        self._loop = asyncio.new_event_loop()
        self._reads = asyncio.Semaphore(CONCURRENT_READS)
        self._thread = threading.Thread(target=self._loop.run_forever, name="state-memory-store", daemon=True)
        self._thread.start()

    def __enter__(self) -> StateMemoryStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the client and end the store's event loop and thread."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self._client.aclose(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the operations and return their results in order (see the module's docstring)."""
        return self._submit(ops).result()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """`batch` for async code."""
        return await asyncio.wrap_future(self._submit(ops))

    def _submit(self, ops: Iterable[Op]) -> Future[list[Result]]:
        ops = list(ops)
        for op in ops:
            self._check(op)
        # the writer is known only here, in the caller's context: the store's loop runs in another
        return asyncio.run_coroutine_threadsafe(self._run(ops, *self._writer()), self._loop)

    def _check(self, op: Op) -> None:
        """Raises what the op's own input would meet, so that a batch holding bad input sends nothing."""
        validate_op_namespace(op)
        if isinstance(op, GetOp | PutOp):
            self._place(op.namespace)
            _member(op.key)
        elif isinstance(op, SearchOp) and op.filter:
            _where(op.filter)
        elif not isinstance(op, SearchOp | ListNamespacesOp):
            raise ValueError(f"Unknown operation type: {type(op)}")

    def _writer(self) -> tuple[str, str | None]:
        """The actor and lineage of this caller's puts: the LangGraph node and the run's id inside
        a graph run, else the store's actor and none."""
        try:
            config = get_config()
        except RuntimeError:  # not inside a runnable
            return self.actor, None
        runtime = get_runtime()
        info = runtime.execution_info if runtime is not None else None
        return config.get("metadata", {}).get("langgraph_node") or self.actor, info.run_id if info else None

    async def _run(self, ops: list[Op], actor: str, lineage_id: str | None) -> list[Result]:
        results: list[Result] = [None] * len(ops)
        gets: dict[tuple[str, ...], list[int]] = defaultdict(list)
        reads: dict[int, Awaitable[Result]] = {}
        puts: dict[tuple[tuple[str, ...], str], PutOp] = {}
        for index, op in enumerate(ops):
            if isinstance(op, GetOp):
                gets[op.namespace].append(index)
            elif isinstance(op, SearchOp):
                reads[index] = self._search(op)
            elif isinstance(op, ListNamespacesOp):
                reads[index] = self._list_namespaces(op)
            else:  # a PutOp, as _check made sure
                puts[(op.namespace, op.key)] = op
        found = await asyncio.gather(
            *(self._get(namespace, [ops[index].key for index in indexes]) for namespace, indexes in gets.items()),
            *reads.values(),
        )
        for indexes, items in zip(gets.values(), found, strict=False):
            for index in indexes:
                results[index] = items.get(ops[index].key)
        for index, result in zip(reads, found[len(gets) :], strict=True):
            results[index] = result
        by_namespace: dict[tuple[str, ...], list[PutOp]] = defaultdict(list)
        for op in puts.values():
            by_namespace[op.namespace].append(op)
        await asyncio.gather(
            *(self._put(namespace, group, actor, lineage_id) for namespace, group in by_namespace.items())
        )
        return results

    # ---------------------------------------------------------------- namespaces and states

    def _fsa(self, labels: tuple[str, ...]) -> str:
        return self.prefix + "".join(":" + _escape(label) for label in labels)

    def _place(self, namespace: tuple[str, ...]) -> tuple[str, str]:
        """The state id and collection of a namespace."""
        if not namespace:
            raise InvalidNamespaceError("Namespace cannot be empty.")
        fsa = self._fsa(namespace)
        if len(fsa.encode()) > MAX_FSA_BYTES:
            raise InvalidNamespaceError(
                f"Namespace {namespace} is too long: its state id {fsa!r} has more than {MAX_FSA_BYTES} bytes"
            )
        return fsa, _escape(namespace[-1])

    def _namespace(self, fsa: str) -> tuple[str, ...] | None:
        """The namespace of a state id, or None when the id is none of this store's."""
        if not fsa.startswith(self.prefix + ":"):
            return None
        labels = fsa[len(self.prefix) + 1 :].split(":")
        return tuple(_unescape(label) for label in labels) if all(labels) else None

    async def _namespaces_under(self, labels: tuple[str, ...]) -> list[tuple[str, ...]]:
        """The namespaces that start with `labels` (all of them for none), each a state of the store."""
        prefix = self._fsa(labels)
        if len(prefix.encode()) > MAX_FSA_BYTES:
            return []  # no state id is that long
        found = []
        async for state in self._client.iter_states(self.tenant, prefix=prefix):
            namespace = self._namespace(state.fsa_id)
            # a state id prefix is no label prefix: "…:foo" also starts "…:foobar"
            if namespace is not None and namespace[: len(labels)] == labels:
                found.append(namespace)
        return found

    async def _list_namespaces(self, op: ListNamespacesOp) -> list[tuple[str, ...]]:
        conditions = op.match_conditions or ()
        literal = next((c.path for c in conditions if c.match_type == "prefix"), ())
        literal = tuple(itertools.takewhile(lambda label: label != "*", literal))
        namespaces = [ns for ns in await self._namespaces_under(literal) if all(_matches(c, ns) for c in conditions)]
        if op.max_depth is not None:
            namespaces = [namespace[: op.max_depth] for namespace in namespaces]
        return sorted(set(namespaces))[op.offset : op.offset + op.limit]

    # ---------------------------------------------------------------- reading items

    async def _slice(self, fsa: str, specs: list[str], **options: Any) -> dict[str, Any]:
        async with self._reads:
            return (await self._client.get_slice(self.tenant, fsa, specs, **options)).slice

    async def _get(self, namespace: tuple[str, ...], keys: list[str]) -> dict[str, Item]:
        """The items of `keys` in the namespace that exist, by key."""
        fsa, collection = self._place(namespace)
        specs = [f"{collection}.{_member(key)}" for key in dict.fromkeys(keys)]
        slices = await asyncio.gather(*(self._slice(fsa, chunk) for chunk in _spec_chunks(specs)))
        members = {member: entry for piece in slices for member, entry in piece.get(collection, {}).items()}
        items = (_item(Item, namespace, member, entry) for member, entry in members.items())
        return {item.key: item for item in items if item is not None}

    async def _search(self, op: SearchOp) -> list[SearchItem]:
        if op.limit < 1:
            return []
        where = _where(op.filter) if op.filter else None
        wanted = op.offset + op.limit  # the newest so many of each namespace hold the newest so many of all
        namespaces = await self._namespaces_under(op.namespace_prefix)
        pages = await asyncio.gather(*(self._newest(namespace, wanted, where) for namespace in namespaces))
        newest = sorted(itertools.chain.from_iterable(pages), key=lambda item: item.updated_at, reverse=True)
        return newest[op.offset : op.offset + op.limit]

    async def _newest(self, namespace: tuple[str, ...], k: int, where: str | None) -> list[SearchItem]:
        """The namespace's `k` most recently changed items that `where` holds for."""
        fsa, collection = self._place(namespace)
        piece = await self._slice(fsa, [collection], k=k, order="recent", where=where)
        items = (_item(SearchItem, namespace, member, entry) for member, entry in piece.get(collection, {}).items())
        return [item for item in items if item is not None]

    # ---------------------------------------------------------------- writing items

    async def _put(self, namespace: tuple[str, ...], ops: list[PutOp], actor: str, lineage_id: str | None) -> None:
        """The puts to one namespace (one state), each a delta, in atomic batch requests."""
        fsa, collection = self._place(namespace)
        origin = {"actor": actor} | ({"lineage_id": lineage_id} if lineage_id else {})
        writes = [{"delta": _delta(collection, op), **origin} for op in ops]
        for start in range(0, len(writes), MAX_BATCH):
            await self._client.apply_deltas(self.tenant, fsa, writes[start : start + MAX_BATCH], atomic=True)


def _member(key: str) -> str:
    if not key:
        raise ValueError("an item's key must not be empty: the service's paths have no empty keys")
    return _escape(key)


def _delta(collection: str, op: PutOp) -> dict[str, Any]:
    """The delta of a put: the value set as it is ($set: never read as operators), the creation
    time kept if earlier, the update time moved forward; or, for a delete, the member removed."""
    member = f"{collection}.{_member(op.key)}"
    if op.value is None:
        return {member: {"$unset": True}}
    now = _now()
    return {
        f"{member}.value": {"$set": dict(op.value)},
        f"{member}.created_at": {"$min": now},
        f"{member}.updated_at": {"$max": now},
    }


def _item(kind: type[Item], namespace: tuple[str, ...], member: str, entry: Any) -> Any:
    """The item a member holds, or None for a member that is no item (written by someone else)."""
    if not (isinstance(entry, dict) and isinstance(entry.get("value"), dict)):
        return None
    if not (isinstance(entry.get("created_at"), str) and isinstance(entry.get("updated_at"), str)):
        return None
    return kind(
        namespace=namespace,
        key=_unescape(member),
        value=entry["value"],
        created_at=datetime.fromisoformat(entry["created_at"]),
        updated_at=datetime.fromisoformat(entry["updated_at"]),
    )


def _spec_chunks(specs: list[str]) -> Iterable[list[str]]:
    """`specs` in groups that one slice request takes."""
    chunk: list[str] = []
    for spec in specs:
        if chunk and (len(chunk) == MAX_SPECS or sum(map(len, chunk)) + len(chunk) + len(spec) > MAX_SPEC_CHARS):
            yield chunk
            chunk = []
        chunk.append(spec)
    if chunk:
        yield chunk


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    """Whether a namespace starts (prefix) or ends (suffix) with the condition's labels, "*" matching any one."""
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        labels = namespace[: len(path)]
    elif condition.match_type == "suffix":
        labels = namespace[len(namespace) - len(path) :]
    else:
        raise ValueError(f"Unsupported match type: {condition.match_type}")
    return all(wanted in ("*", label) for wanted, label in zip(path, labels, strict=True))


# ---------------------------------------------------------------- filters as SQL/JSON path predicates
#
# A filter holds for an item as InMemoryStore's does: a plain value equals (objects: every given
# field equals, others may exist; arrays: same length and each element equals), None also matches a
# missing field, and the operators compare. Every comparison first checks the JSON type, which
# keeps PostgreSQL's lax mode from looking into arrays ([1, 2] == 1 would hold) and from comparing
# what cannot be ("a" < 1 is unknown, where Python would raise).

_OPERATORS = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}


def _where(filter: dict[str, Any]) -> str:
    """The `where` predicate of a search's filter, on the item's value in its member."""
    return " && ".join(_condition(f'@."value".{_quoted(field)}', value) for field, value in filter.items())


def _condition(path: str, expected: Any) -> str:
    """The predicate that the value at `path` (a jsonpath of the entry, `@…`) matches `expected`."""
    if isinstance(expected, dict) and any(key.startswith("$") for key in expected):
        return " && ".join(_operator(path, operator, operand) for operator, operand in expected.items())
    if isinstance(expected, dict):
        fields = (_condition(f"{path}.{_quoted(key)}", value) for key, value in expected.items())
        return " && ".join([f'{path}.type() == "object"', *fields])
    if isinstance(expected, list | tuple):
        elements = (_condition(f"{path}[{index}]", value) for index, value in enumerate(expected))
        return " && ".join([f'{path}.type() == "array"', f"{path}.size() == {len(expected)}", *elements])
    return _equals(path, expected)


def _operator(path: str, operator: str, operand: Any) -> str:
    if operator == "$eq":
        return _equals(path, operand)
    if operator == "$ne":
        return f"!({_equals(path, operand)})"
    if operator not in _OPERATORS:
        raise ValueError(f"Unsupported operator: {operator}")
    kind = _json_type(operand)
    if kind not in ("number", "string"):
        raise ValueError(f"{operator} compares numbers or strings, not {operand!r}")
    return f'({path}.type() == "{kind}" && {path} {_OPERATORS[operator]} {_literal(operand)})'


def _equals(path: str, expected: Any) -> str:
    if isinstance(expected, dict | list | tuple):
        raise ValueError(f"$eq and $ne compare numbers, strings, booleans or None, not {expected!r}")
    if expected is None:
        return f'(!exists({path}) || {path}.type() == "null")'
    return f'({path}.type() == "{_json_type(expected)}" && {path} == {_literal(expected)})'


def _json_type(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | Decimal):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null" if value is None else None


def _literal(value: Any) -> str:
    """A jsonpath literal of a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quoted(value)
    if isinstance(value, int | float | Decimal) and math.isfinite(value):
        return str(value)
    raise ValueError(f"a filter compares with JSON numbers, strings, booleans or None, not {value!r}")


def _quoted(text: str) -> str:
    """A jsonpath string: JSON's escapes are also jsonpath's."""
    return json.dumps(text, ensure_ascii=False)
