"""Properties (hypothesis) of the storage and the log (DESIGN §3, §4.3):

* any JSON object round-trips exactly through sms.replace_state and sms.document;
* for any sequence of deltas (rejected ones included), replaying the log from version 0 through
  sms.apply_delta reproduces the state, and the state at every version v is the fold of deltas
  1..v; a rejected delta changes nothing;
* a batch (sms.apply_deltas, group commit) answers and leaves every row as its writes applied one
  at a time would.

Sync psycopg on one database per test; every example works on a state of its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from helpers import canonical, expected_counts
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.domain import jsontext
from app.domain.delta import escape_key

PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
# SQLSTATEs of a delta that is refused as it should be: invalid, type mismatch, $expect failed
REJECTED = {"SM001", "SM002", "SM004"}


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


def fresh_id() -> str:
    return uuid.uuid4().hex


def as_sent(value: Any) -> Any:
    """What the JSON text of `value` means, numbers read exactly."""
    return json.loads(json.dumps(value, ensure_ascii=False), parse_float=Decimal)


def document(pg: psycopg.Connection, tenant: str, fsa: str) -> str:
    return pg.execute("SELECT sms.document(%s, %s)::text", (tenant, fsa)).fetchone()[0]


def same_jsonb(pg: psycopg.Connection, left: str, right: str) -> bool:
    return pg.execute("SELECT %s::jsonb = %s::jsonb", (left, right)).fetchone()[0]


def version(pg: psycopg.Connection, tenant: str, fsa: str) -> int:
    row = pg.execute("SELECT version FROM sms.states WHERE tenant_id = %s AND fsa_id = %s", (tenant, fsa)).fetchone()
    return row[0] if row else 0


def check_counters(pg: psycopg.Connection, tenant: str, fsa: str) -> None:
    """The header's entry_count and sms.member_counts describe sms.entries without scanning it:
    they must be right."""
    counted, recorded = pg.execute(
        """SELECT (SELECT count(*) FROM sms.entries WHERE tenant_id = %(t)s AND fsa_id = %(f)s),
                  coalesce((SELECT entry_count FROM sms.states WHERE tenant_id = %(t)s AND fsa_id = %(f)s), 0)""",
        {"t": tenant, "f": fsa},
    ).fetchone()
    assert recorded == counted
    rows = pg.execute(
        """SELECT collection, family, members, statuses FROM sms.member_counts
            WHERE tenant_id = %s AND fsa_id = %s AND members > 0""",
        (tenant, fsa),
    ).fetchall()
    doc = json.loads(document(pg, tenant, fsa))
    assert {(c, f): (n, statuses) for c, f, n, statuses in rows} == expected_counts(doc)


# ---- (a) any JSON object round-trips -------------------------------------------------------------

# any character but NUL, with the ones that mean something in paths and globs drawn often
text_without_nul = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00") | st.sampled_from([".", "\\", "$", "*", "?", "/"]),
    max_size=12,
)
# numbers within the kept range (DESIGN: absolute value below 10^18, at most 18 decimal places);
# floats of 0.01 and more print with at most 18 decimal places
kept_numbers = st.integers(-(10**18) + 1, 10**18 - 1) | st.floats(min_value=-1e17, max_value=1e17).filter(
    lambda f: f == 0 or abs(f) >= 0.01
)
json_scalars = st.none() | st.booleans() | kept_numbers | text_without_nul
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(text_without_nul, children, max_size=5),
    max_leaves=25,
)
# Top-level keys may not start with $ (reserved in deltas, refused by replace_state by design).
top_level_keys = text_without_nul.filter(lambda k: not k.startswith("$"))
json_documents = st.dictionaries(top_level_keys, json_values, max_size=6)


@PROPERTY_SETTINGS
@given(first=json_documents, second=json_documents)
def test_any_json_object_round_trips_through_replace_state_and_document(pg, first, second):
    tenant, fsa = "props", fresh_id()
    for number, doc in enumerate((first, second), start=1):
        text = json.dumps(doc, ensure_ascii=False)
        pg.execute("SELECT sms.replace_state(%s, %s, %s::jsonb)", (tenant, fsa, text))
        stored = document(pg, tenant, fsa)
        assert same_jsonb(pg, stored, text)
        assert canonical(json.loads(stored, parse_float=Decimal)) == canonical(as_sent(doc))
        check_counters(pg, tenant, fsa)
        # replacing with {} over an empty state logs nothing; anything else is one version
        assert version(pg, tenant, fsa) <= number


def replay(pg: psycopg.Connection, tenant: str, fsa: str, to: str) -> None:
    """The log of tenant/fsa applied op list by op list to the state `to`: the log read first, each
    apply a statement of its own (on Citus one that reads sms.deltas may not call a function that
    reads in turn)."""
    log = pg.execute(
        "SELECT ops::text FROM sms.deltas WHERE tenant_id = %s AND fsa_id = %s ORDER BY version", (tenant, fsa)
    ).fetchall()
    for (ops,) in log:
        pg.execute("SELECT sms.apply_ops(%s, %s, %s::jsonb)", (tenant, to, ops))


def test_empty_top_level_key_round_trips_and_replays(pg):
    """An empty key is valid JSON: the document view round-trips any JSON object (DESIGN §3),
    and the log replays into the same state."""
    doc = json.dumps({"": 1, "a": {"": 2}, "b.c": {"\\": [3]}})
    pg.execute("SELECT sms.replace_state('t', 'f', %s::jsonb)", (doc,))
    assert same_jsonb(pg, document(pg, "t", "f"), doc)
    replay(pg, "t", "f", "replayed")
    assert same_jsonb(pg, document(pg, "t", "replayed"), doc)


# ---- (b) replaying the log reproduces every version ----------------------------------------------

collections = st.sampled_from(["tasks", "metrics", "flags"])
path_keys = st.sampled_from(["a", "b", "c.d", "x\\y", "status", "T_1"])
paths = st.builds(
    lambda c, rest: ".".join(escape_key(k) for k in [c, *rest]), collections, st.lists(path_keys, max_size=2)
)
small_numbers = st.integers(-5, 5) | st.decimals(min_value=-10, max_value=10, places=2, allow_nan=False)
small_strings = st.sampled_from(["x", "y", "z", ""])
small_scalars = st.none() | st.booleans() | small_numbers | small_strings
small_values = st.recursive(
    small_scalars,
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", "status", "$d"]), children, max_size=3)
    ),
    max_leaves=6,
)
merge_patches = st.dictionaries(
    st.sampled_from(["a", "b", "k", "T_2"]),
    st.none() | small_scalars | st.dictionaries(st.sampled_from(["a", "b"]), st.none() | small_scalars, max_size=2),
    max_size=3,
)
set_operands = small_values | st.lists(small_values, max_size=3)
operations = st.one_of(
    small_values,  # a plain value: $set (refused when it holds $-keys)
    st.builds(lambda v: {"$set": v}, small_values),
    st.just({"$unset": True}),
    st.builds(lambda n: {"$inc": n}, small_numbers),
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$max", "$min"]), small_numbers | small_strings),
    st.builds(lambda op, v: {op: v}, st.sampled_from(["$add", "$addToSet", "$remove", "$pull"]), set_operands),
    st.builds(lambda v: {"$push": v}, small_values),
    st.builds(
        lambda each, cap: {"$push": {"$each": each, "$slice": cap}},
        st.lists(small_values, max_size=3),
        st.none() | st.integers(-3, 3),
    ),
    st.builds(lambda patch: {"$merge": patch}, merge_patches),
)
expectations = st.dictionaries(paths, small_scalars | st.builds(lambda e: {"$exists": e}, st.booleans()), max_size=1)


@st.composite
def deltas(draw) -> dict[str, Any]:
    delta = draw(st.dictionaries(paths, operations, min_size=1, max_size=3))
    if draw(st.integers(0, 9)) == 0:
        delta["$expect"] = draw(expectations)
    return delta


delta_steps = st.tuples(st.just("delta"), deltas())
replace_steps = st.tuples(st.just("replace"), st.dictionaries(collections, small_values, max_size=2))
steps = st.lists(
    st.one_of(delta_steps, delta_steps, delta_steps, replace_steps),  # mostly deltas
    min_size=1,
    max_size=12,
)


def apply_step(pg: psycopg.Connection, tenant: str, fsa: str, kind: str, body: Any) -> bool:
    """Applies one step; True if applied, False if refused for one of the expected reasons."""
    function = "sms.apply_delta" if kind == "delta" else "sms.replace_state"
    try:
        pg.execute(f"SELECT {function}(%s, %s, %s::jsonb)", (tenant, fsa, jsontext.encode(body).decode()))
    except psycopg.Error as exc:
        assert exc.sqlstate in REJECTED, f"{exc.sqlstate}: {exc}"
        return False
    return True


@PROPERTY_SETTINGS
@given(steps=steps)
def test_replaying_the_log_reproduces_every_version(pg, steps):
    tenant, fsa = "props", fresh_id()
    history = {0: "{}"}  # version -> document
    for kind, body in steps:
        before_version, before = version(pg, tenant, fsa), history[max(history)]
        applied = apply_step(pg, tenant, fsa, kind, body)
        event(f"{kind} {'applied' if applied else 'refused'}")
        now = document(pg, tenant, fsa)
        if applied:
            if version(pg, tenant, fsa) == before_version:  # replace_state with {} over {}: nothing logged
                assert kind == "replace" and not body and same_jsonb(pg, now, "{}")
                continue
            assert version(pg, tenant, fsa) == before_version + 1
            history[before_version + 1] = now
        else:  # a refused delta changes nothing at all
            assert version(pg, tenant, fsa) == before_version
            assert same_jsonb(pg, now, before)
        check_counters(pg, tenant, fsa)
    final = max(history)
    versions = pg.execute(
        "SELECT array_agg(version ORDER BY version) FROM sms.deltas WHERE tenant_id = %s AND fsa_id = %s",
        (tenant, fsa),
    ).fetchone()[0]
    assert (versions or []) == list(range(1, final + 1))

    # the normalised ops in the log turn back into a delta that normalises to the same ops (in
    # any order: paths never overlap, so the order of ops never matters)
    assert pg.execute(
        """SELECT coalesce(bool_and(
                      (SELECT jsonb_agg(o ORDER BY o)
                         FROM jsonb_array_elements(sms.normalize_delta(sms.ops_to_delta(ops)) -> 'ops') o)
                      = (SELECT jsonb_agg(o ORDER BY o) FROM jsonb_array_elements(ops) o)), true)
             FROM sms.deltas WHERE tenant_id = %s AND fsa_id = %s""",
        (tenant, fsa),
    ).fetchone()[0]

    # the whole log replayed
    replayed = fsa + "-replay"
    replay(pg, tenant, fsa, replayed)
    assert version(pg, tenant, replayed) == final
    assert same_jsonb(pg, document(pg, tenant, replayed), history[final])
    check_counters(pg, tenant, replayed)

    # delta by delta: the state at every version v is the fold of deltas 1..v
    stepwise = fsa + "-stepwise"
    ops = pg.execute(
        "SELECT version, sms.ops_to_delta(ops)::text FROM sms.deltas WHERE tenant_id = %s AND fsa_id = %s ORDER BY 1",
        (tenant, fsa),
    ).fetchall()
    for v, delta in ops:
        pg.execute("SELECT sms.apply_delta(%s, %s, %s::jsonb)", (tenant, stepwise, delta))
        assert same_jsonb(pg, document(pg, tenant, stepwise), history[v]), f"version {v}"


# ---- (c) a batch leaves every row as its writes one by one would -----------------------------------

batch_writes = st.lists(
    st.builds(
        lambda delta, delta_id, actor: {
            "delta": delta,
            **({"delta_id": delta_id} if delta_id else {}),
            **({"actor": actor} if actor else {}),
        },
        deltas(),
        st.sampled_from([None, None, None, str(uuid.UUID(int=1)), str(uuid.UUID(int=2))]),  # retries, reuses
        st.sampled_from([None, "a", "b"]),
    ),
    min_size=1,
    max_size=10,
)

# Every row a write leaves, as text, without its state's ids; (table, query) pairs
STATE_ROWS = {
    "entries": "SELECT collection, is_member, member, value::text, version FROM sms.entries",
    "history": "SELECT collection, is_member, member, version, value::text FROM sms.entry_history",
    "member_counts": "SELECT collection, family, members, statuses::text, version FROM sms.member_counts",
    "header": "SELECT version, entry_count, content_bytes FROM sms.states",
    "log": "SELECT version, actor, ops::text, paths, collections, meta::text FROM sms.deltas",
    "snapshots": "SELECT version, collection, is_member, member, value::text FROM sms.snapshot_entries",
}


def state_rows(pg: psycopg.Connection, tenant: str, fsa: str) -> dict[str, list[tuple[Any, ...]]]:
    return {
        table: sorted(pg.execute(f"{query} WHERE tenant_id = %s AND fsa_id = %s", (tenant, fsa)).fetchall())
        for table, query in STATE_ROWS.items()
    }


def markers_apart(rows: dict[str, list[tuple[Any, ...]]]) -> list[tuple[str, int]]:
    """Takes the versions of the collections' marker rows out of state_rows' entries (a batch moves a
    marker once, where writes one by one move it each time) and returns them."""
    entries, markers = [], []
    for collection, is_member, member, value, version in rows["entries"]:
        if not is_member and value == "{}":
            markers.append((collection, version))
            version = None
        entries.append((collection, is_member, member, value, version))
    rows["entries"] = entries
    return markers


def write_alone(pg: psycopg.Connection, tenant: str, fsa: str, write: dict[str, Any]) -> dict[str, Any]:
    """sms.apply_write in a transaction of its own: its result, or its error as a batch reports it."""
    try:
        return json.loads(
            pg.execute(
                "SELECT sms.apply_write(%s, %s, %s::jsonb)::text", (tenant, fsa, jsontext.encode(write).decode())
            ).fetchone()[0]
        )
    except psycopg.Error as exc:
        return {"success": False, "sqlstate": exc.sqlstate, "message": exc.diag.message_primary}


def check_batch_as_alone(
    pg: psycopg.Connection, start: dict[str, Any], writes: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The writes as one sms.apply_deltas batch on a state and one by one on another, both from
    `start`, snapshots every 3 versions: the same results, and the same rows in every table.
    Returns the results."""
    fsa = fresh_id()
    batched, alone = "props-batched", "props-alone"  # tenants of their own: delta ids are per state
    pg.execute("SET sms.snapshot_every = 3")
    try:
        for tenant in (batched, alone):
            if start:
                pg.execute(
                    "SELECT sms.replace_state(%s, %s, %s::jsonb)", (tenant, fsa, jsontext.encode(start).decode())
                )
        results = json.loads(
            pg.execute(
                "SELECT sms.apply_deltas(%s, %s, %s::jsonb)::text", (batched, fsa, jsontext.encode(writes).decode())
            ).fetchone()[0]
        )
        expected = [write_alone(pg, alone, fsa, write) for write in writes]
    finally:
        pg.execute("RESET sms.snapshot_every")

    for write, got, wanted in zip(writes, results, expected, strict=True):
        if "delta_id" not in write:  # made afresh in each state
            got.pop("delta_id", None)
            wanted.pop("delta_id", None)
        if not wanted["success"] and "sqlstate" in wanted:
            got = {key: got.get(key) for key in wanted}
        assert got == wanted, write
    rows = {tenant: state_rows(pg, tenant, fsa) for tenant in (batched, alone)}
    markers = {tenant: markers_apart(rows[tenant]) for tenant in (batched, alone)}
    assert rows[batched] == rows[alone]
    # what a marker's readers compare (sms.slice_coarse) is whether it moved: in the batch, to the
    # first version that changed one of its members (or made it again), one by one to each of them
    start_version = 1 if start else 0
    for (collection, moved_once), (_, moved_each_time) in zip(markers[batched], markers[alone], strict=True):
        assert (moved_once > start_version) == (moved_each_time > start_version), collection
        assert moved_once <= moved_each_time, collection
    check_counters(pg, batched, fsa)
    return expected


@PROPERTY_SETTINGS
@given(start=st.dictionaries(collections, small_values, max_size=2), writes=batch_writes)
def test_a_batch_leaves_every_row_as_its_writes_one_by_one_would(pg, start, writes):
    """Group commit's promise in full: sms.apply_deltas's results and every row of the state —
    entries, history, member counts, header, log, snapshots — are what the same writes leave
    applied one at a time."""
    for result in check_batch_as_alone(pg, start, writes):
        event("applied" if result["success"] else f"refused {result.get('sqlstate')}")


def test_a_batch_of_an_agent_loop_leaves_every_row_as_one_by_one(pg):
    """What hot states see most, in one batch: counters, task statuses moving and back, members made
    and removed, collections made, no-op operators, refusals, retries, a whole collection replaced,
    a precondition, and snapshots falling due mid-batch."""
    writes = [
        {"delta": {"counters.hits": {"$inc": 1}, "tasks.T1.status": "doing"}},
        {"delta": {"tasks.T1.estimate": 3, "tasks.T2": {"status": "todo"}}, "actor": "a"},
        {"delta": {"counters.hits": {"$inc": 1}, "tasks.T1.status": "done"}, "delta_id": str(uuid.UUID(int=7))},
        {"delta": {"tasks.T1.estimate": {"$inc": 2}}},  # a value changes, not the status
        {"delta": {"counters.hits": {"$inc": 1}, "tasks.T1.status": "done"}, "delta_id": str(uuid.UUID(int=7))},
        {"delta": {"counters.hits": {"$max": 0}, "fresh.k": {"$push": "x"}}},  # no change; a new collection
        {"delta": {"tasks.T2": {"$unset": True}, "tasks.T3.status": "todo"}},
        {"delta": {"counters.hits": {"$push": 1}}},  # a number: refused alone
        {"delta": {"tasks.T3.status": "doing"}, "delta_id": str(uuid.UUID(int=8))},
        {"delta": {"tasks.T3.note": "x", "counters.misses": {"$inc": 1}}},
        {"delta": {"flags": {"on": True}}},  # a whole collection: the slow path, between fast ones
        {"delta": {"flags.on": False, "tasks.T1.status": "todo"}},
        {"delta": {"tasks.T4.status": "todo", "$expect": {"tasks.T1.status": "todo"}}},  # a precondition
        {"delta": {"tasks.T4.status": "done", "counters.hits": {"$inc": 1}}},
        {"delta": {"tasks.T4.estimate": 1}},  # the count of tasks keeps the version of T4's status change
    ]
    results = check_batch_as_alone(pg, {"counters": {"hits": 0}, "tasks": {"T0": {"status": "todo"}}}, writes)
    assert [r["success"] for r in results] == [True] * 7 + [False] + [True] * 7
    assert results[4]["duplicate"] and results[4]["version"] == results[2]["version"]
