"""Every merge operator of DESIGN §4.2 and the path rules of §4.1, run in SQL as a psql user would
(`sms.apply_delta`, then `sms.document`), plus type mismatches in SQL and over HTTP."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from helpers import FSA, TENANT, apply_delta, assert_problem, document, listening, snapshot


async def apply_all(conn: asyncpg.Connection, *deltas: dict[str, Any], fsa: str = FSA) -> Any:
    """Apply the deltas in order and return the resulting document."""
    for delta in deltas:
        result = await apply_delta(conn, delta, fsa=fsa)
        assert result["success"] is True
    return await document(conn, fsa=fsa)


async def value_text(conn: asyncpg.Connection, *keys: str) -> str:
    """The JSON text PostgreSQL holds at a path of the document (exact, never through a float)."""
    return await conn.fetchval("SELECT (sms.document($1, $2) #> $3)::text", TENANT, FSA, list(keys))


# ---------------------------------------------------------------- value / $set


async def test_plain_values_set_paths_and_create_intermediate_objects(conn):
    doc = await apply_all(
        conn,
        {
            "tasks.T123.status": "OPEN",
            "metrics.ctr": 0.5,
            "name": "demo",
            "deep.a.b.c.d": True,
            "nothing": None,
            "list": [1, "two", {"three": 3}],
        },
    )
    assert doc == {
        "tasks": {"T123": {"status": "OPEN"}},
        "metrics": {"ctr": 0.5},
        "name": "demo",
        "deep": {"a": {"b": {"c": {"d": True}}}},
        "nothing": None,
        "list": [1, "two", {"three": 3}],
    }


async def test_later_set_wins_and_siblings_stay(conn):
    doc = await apply_all(
        conn,
        {"tasks.T1": {"status": "OPEN", "owner": "a"}, "tasks.T2.status": "OPEN", "n": 1},
        {"tasks.T1.status": "DONE", "n": 2},
        {"tasks.T1.status": {"$set": "CLOSED"}},
    )
    assert doc == {"tasks": {"T1": {"status": "CLOSED", "owner": "a"}, "T2": {"status": "OPEN"}}, "n": 2}


async def test_set_operator_stores_an_object_literally(conn):
    literal = {"$inc": 1, "plain": {"$max": 3}}
    doc = await apply_all(conn, {"cfg": {"$set": literal}, "x.y": {"$set": {"$unset": True}}})
    assert doc == {"cfg": literal, "x": {"y": {"$unset": True}}}


async def test_set_of_a_whole_top_level_object_replaces_all_its_members(conn):
    doc = await apply_all(
        conn,
        {"tasks": {"A": {"s": 1}, "B": {"s": 2}}},
        {"tasks": {"C": {"s": 3}}},
    )
    assert doc == {"tasks": {"C": {"s": 3}}}
    doc = await apply_all(conn, {"tasks": {"$set": {"D": 4}}})
    assert doc == {"tasks": {"D": 4}}


async def test_a_top_level_object_can_become_a_scalar_and_back(conn):
    doc = await apply_all(conn, {"tasks": {"A": 1, "B": 2}}, {"tasks": "gone"})
    assert doc == {"tasks": "gone"}
    doc = await apply_all(conn, {"tasks": {"Z": [1]}})
    assert doc == {"tasks": {"Z": [1]}}


async def test_empty_objects_round_trip(conn):
    delta = {"empty": {}, "a.b": {}, "tasks.T1": {}, "tasks.T2.meta": {}}
    doc = await apply_all(conn, delta)
    assert doc == {"empty": {}, "a": {"b": {}}, "tasks": {"T1": {}, "T2": {"meta": {}}}}


async def test_a_collection_emptied_member_by_member_stays_an_empty_object(conn):
    doc = await apply_all(conn, {"tasks": {"A": 1}}, {"tasks.A": {"$unset": True}})
    assert doc == {"tasks": {}}


# ---------------------------------------------------------------- $unset


async def test_unset_removes_leaves_members_and_whole_keys(conn):
    doc = await apply_all(
        conn,
        {"tasks": {"A": {"s": 1, "t": 2}, "B": 1, "C": 2}, "n": 1, "m": 2, "deep.x.y": 1, "deep.x.z": 2},
        {
            "tasks.A.t": {"$unset": True},
            "tasks.B": {"$unset": True},
            "n": {"$unset": True},
            "deep.x.y": {"$unset": True},
        },
    )
    assert doc == {"tasks": {"A": {"s": 1}, "C": 2}, "m": 2, "deep": {"x": {"z": 2}}}
    doc = await apply_all(conn, {"tasks": {"$unset": True}})
    assert doc == {"m": 2, "deep": {"x": {"z": 2}}}


async def test_unset_of_a_missing_path_or_through_a_scalar_is_a_no_op(conn):
    paths = ["missing", "missing.deeper", "tasks.NOPE", "tasks.A.nope", "tasks.A.nope.deeper", "text.inside"]
    paths += ["tasks.A.s.x", "list.x"]
    before = await apply_all(conn, {"tasks": {"A": {"s": 1}}, "text": "hello", "list": [1]})
    for path in paths:
        result = await apply_delta(conn, {path: {"$unset": True}})
        assert result["success"] is True
        assert await document(conn) == before, path


# ---------------------------------------------------------------- $inc


async def test_inc_adds_integers_and_floats(conn):
    doc = await apply_all(
        conn,
        {"n": 10, "f": 1.5, "metrics.ctr": 2},
        {"n": {"$inc": 5}, "f": {"$inc": 2.25}, "metrics.ctr": {"$inc": -3}},
        {"n": {"$inc": -20}},
    )
    assert doc == {"n": -5, "f": 3.75, "metrics": {"ctr": -1}}


async def test_inc_on_a_missing_path_starts_at_zero(conn):
    doc = await apply_all(conn, {"n": {"$inc": 3}, "metrics.visits": {"$inc": 1}, "a.b.c": {"$inc": 0.5}})
    assert doc == {"n": 3, "metrics": {"visits": 1}, "a": {"b": {"c": 0.5}}}


async def test_inc_is_exact_for_decimals(conn):
    await apply_all(conn, {"x": {"$inc": 0.1}, "m.y": {"$inc": 1.1}})
    await apply_all(conn, {"x": {"$inc": 0.2}, "m.y": {"$inc": 2.2}})
    assert await value_text(conn, "x") == "0.3"
    assert await value_text(conn, "m", "y") == "3.3"
    # through a Decimal-preserving parse too, where float arithmetic would give 0.30000000000000004
    doc = json.loads(await conn.fetchval("SELECT sms.document($1, $2)::text", TENANT, FSA), parse_float=Decimal)
    assert doc == {"x": Decimal("0.3"), "m": {"y": Decimal("3.3")}}


async def test_inc_is_exact_beyond_double_precision(conn):
    await apply_delta(conn, '{"big": 9007199254740993}')
    await apply_delta(conn, '{"big": {"$inc": 1}}')
    assert await value_text(conn, "big") == "9007199254740994"


# ---------------------------------------------------------------- $max / $min


async def test_max_and_min_keep_the_larger_and_smaller_number(conn):
    doc = await apply_all(
        conn,
        {"hi": 5, "lo": 5, "mixed": 2},
        {"hi": {"$max": 3}, "lo": {"$min": 7}},
        {"hi": {"$max": 9}, "lo": {"$min": -1}, "mixed": {"$max": 2.5}},
        {"hi": {"$max": 9}, "lo": {"$min": -1}},
    )
    assert doc == {"hi": 9, "lo": -1, "mixed": 2.5}


async def test_max_and_min_compare_strings_in_byte_order(conn):
    doc = await apply_all(
        conn,
        {"hi": "b", "lo": "b", "case": "B", "ts": "2024-01-02T00:00:00Z"},
        {"hi": {"$max": "a"}, "lo": {"$min": "c"}, "ts": {"$max": "2024-01-10T00:00:00Z"}},
        {"hi": {"$max": "bb"}, "lo": {"$min": "a"}, "case": {"$max": "a"}},
    )
    # "a" (0x61) sorts after "B" (0x42) in byte order, whatever the database's collation says
    assert doc == {"hi": "bb", "lo": "a", "case": "a", "ts": "2024-01-10T00:00:00Z"}


async def test_max_and_min_on_a_missing_path_set_the_operand(conn):
    doc = await apply_all(conn, {"hi": {"$max": 4}, "lo": {"$min": "x"}, "m.peak": {"$max": -2}})
    assert doc == {"hi": 4, "lo": "x", "m": {"peak": -2}}


# ---------------------------------------------------------------- $add / $addToSet


async def test_add_keeps_set_semantics(conn):
    doc = await apply_all(
        conn,
        {"tags": {"$add": ["a", "b", "a", "c"]}},
        {"tags": {"$add": ["c", "d", "d"]}},
        {"tags": {"$addToSet": ["a", "e"]}},
        {"tags": {"$add": "f"}},
        {"tags": {"$addToSet": "f"}},
    )
    assert doc == {"tags": ["a", "b", "c", "d", "e", "f"]}


async def test_add_on_a_missing_path_creates_the_set(conn):
    doc = await apply_all(conn, {"tasks.T1.labels": {"$add": [2, 1, 2]}, "top": {"$addToSet": 1}})
    assert doc == {"tasks": {"T1": {"labels": [2, 1]}}, "top": [1]}


async def test_add_compares_objects_and_arrays_by_equality(conn):
    doc = await apply_all(
        conn,
        {"s": {"$add": [{"a": 1, "b": 2}, [1, 2], {"a": 1, "b": 2}]}},
        {"s": {"$add": [{"b": 2, "a": 1}, [1, 2], [2, 1], {"a": 1}]}},
    )
    assert doc == {"s": [{"a": 1, "b": 2}, [1, 2], [2, 1], {"a": 1}]}


# ---------------------------------------------------------------- $remove / $pull


async def test_remove_and_pull_take_every_occurrence_out(conn):
    doc = await apply_all(
        conn,
        {"list": [1, 2, 3, 2, {"k": 1}, [1], "x"], "tasks.T.tags": ["a", "b"]},
        {"list": {"$remove": [2, {"k": 1}, 99]}, "tasks.T.tags": {"$pull": "a"}},
        {"list": {"$pull": [[1], "x"]}},
    )
    assert doc == {"list": [1, 3], "tasks": {"T": {"tags": ["b"]}}}


async def test_remove_can_empty_a_set(conn):
    doc = await apply_all(conn, {"s": ["a"]}, {"s": {"$remove": "a"}})
    assert doc == {"s": []}


async def test_remove_on_a_missing_path_is_a_no_op(conn):
    before = await apply_all(conn, {"tasks": {"A": {"s": 1}}})
    for path in ["missing", "tasks.NOPE", "tasks.A.nope", "a.b.c"]:
        for op in ["$remove", "$pull"]:
            assert (await apply_delta(conn, {path: {op: [1]}}))["success"] is True
            assert await document(conn) == before, (path, op)


# ---------------------------------------------------------------- $push


async def test_push_appends_single_values_in_order(conn):
    doc = await apply_all(
        conn,
        {"log": {"$push": "a"}},
        {"log": {"$push": "b"}},
        {"log": {"$push": {"event": "c"}}},
        {"log": {"$push": ["d"]}},
    )
    assert doc == {"log": ["a", "b", {"event": "c"}, ["d"]]}


async def test_push_each_with_negative_slice_keeps_the_last_n(conn):
    doc = await apply_all(
        conn,
        {"recent": [1, 2, 3]},
        {"recent": {"$push": {"$each": [4, 5, 6], "$slice": -4}}},
    )
    assert doc == {"recent": [3, 4, 5, 6]}
    doc = await apply_all(conn, {"recent": {"$push": {"$each": [7], "$slice": -2}}})
    assert doc == {"recent": [6, 7]}


async def test_push_creates_the_array_when_missing(conn):
    doc = await apply_all(
        conn,
        {"tasks.T1.history": {"$push": "created"}, "capped": {"$push": {"$each": [1, 2, 3], "$slice": -2}}},
    )
    assert doc == {"tasks": {"T1": {"history": ["created"]}}, "capped": [2, 3]}


# ---------------------------------------------------------------- $merge


async def test_merge_deep_merges_and_null_removes_keys(conn):
    doc = await apply_all(
        conn,
        {"cfg.a": {"x": 1, "y": 2, "deep": {"k": 1, "gone": 0}}, "cfg.b": 1},
        {"cfg.a": {"$merge": {"y": None, "z": 3, "deep": {"gone": None, "new": True}}}},
    )
    assert doc == {"cfg": {"a": {"x": 1, "z": 3, "deep": {"k": 1, "new": True}}, "b": 1}}


async def test_merge_creates_a_missing_path(conn):
    doc = await apply_all(conn, {"tasks.T1": {"$merge": {"status": "OPEN", "drop": None}}, "top": {"$merge": {}}})
    assert doc == {"tasks": {"T1": {"status": "OPEN"}}, "top": {}}


async def test_merge_on_a_whole_collection(conn):
    doc = await apply_all(
        conn,
        {"tasks": {"T1": {"status": "OPEN", "owner": "a"}, "T2": {"status": "OPEN"}, "T3": 1}},
        {"tasks": {"$merge": {"T1": {"status": "DONE"}, "T2": None, "T4": {"status": "NEW"}}}},
    )
    assert doc == {"tasks": {"T1": {"status": "DONE", "owner": "a"}, "T3": 1, "T4": {"status": "NEW"}}}


async def test_merge_on_a_missing_collection_creates_it(conn):
    doc = await apply_all(conn, {"tasks": {"$merge": {"T1": {"s": 1}, "T2": None}}})
    assert doc == {"tasks": {"T1": {"s": 1}}}


async def test_merge_replaces_a_value_that_is_not_an_object(conn):
    doc = await apply_all(
        conn,
        {"top": "text", "arr": [1, 2], "tasks.T1": "pending", "deep.x.y": 5},
        {
            "top": {"$merge": {"a": 1, "b": None}},
            "arr": {"$merge": {"c": 2}},
            "tasks.T1": {"$merge": {"status": "OPEN"}},
            "deep.x.y": {"$merge": {"z": {"w": None, "v": 1}}},
        },
    )
    assert doc == {
        "top": {"a": 1},
        "arr": {"c": 2},
        "tasks": {"T1": {"status": "OPEN"}},
        "deep": {"x": {"y": {"z": {"v": 1}}}},
    }


# ---------------------------------------------------------------- paths


async def test_escaped_dots_and_backslashes_are_literal_key_characters(conn):
    doc = await apply_all(
        conn,
        {"a\\.b": 1, "x.y\\.z": 2, "back\\\\slash.k": 3, "v1\\.2.notes": {"$push": "n"}},
    )
    assert doc == {"a.b": 1, "x": {"y.z": 2}, "back\\slash": {"k": 3}, "v1.2": {"notes": ["n"]}}


async def test_escaped_path_is_reported_escaped_in_changed(conn):
    result = await apply_delta(conn, {"x.y\\.z": 1})
    assert result["changed"] == ["x.y\\.z"]


@pytest.mark.parametrize(
    ("path", "keys"),
    [
        ("a", ["a"]),
        ("a.b.c", ["a", "b", "c"]),
        ("a\\.b", ["a.b"]),
        ("x.y\\.z", ["x", "y.z"]),
        ("back\\\\slash.k", ["back\\slash", "k"]),
        ("\\\\\\.", ["\\."]),
        ("é.ü\\.ß", ["é", "ü.ß"]),
    ],
)
async def test_paths_and_their_keys_are_each_others_inverse(conn, path, keys):
    assert await conn.fetchval("SELECT sms.parse_path($1)", path) == keys
    assert await conn.fetchval("SELECT sms.format_path($1::text[])", keys) == path


async def test_no_keys_format_as_no_path(conn):
    assert await conn.fetchval("SELECT sms.format_path('{}'::text[])") is None
    assert await conn.fetchval("SELECT sms.format_path(NULL::text[])") is None


MALFORMED = [
    ({"a..b": 1}, "a..b"),
    ({".a": 1}, ".a"),
    ({"a.": 1}, "a."),
    ({"$weird": 1}, "$weird"),
    ({"n": {"$frobnicate": 1}}, "$frobnicate"),
    ({"n": {"$inc": 1, "$max": 2}}, "several operators"),
    ({"a": 1, "a.b": 2}, "overlap"),
    ({"n": {"$inc": "1"}}, "$inc"),
    ({"a": [{"$inc": 1}]}, "$set"),  # a $-key in a plain value that is no nested delta (inside an array)
    ({"a": {"b": {"$inc": 1, "c": 2}}}, "mixes operators"),  # a nested delta's leaf is an operator or a value
]


async def test_malformed_deltas_raise_sm001_and_apply_nothing(conn):
    await apply_delta(conn, {"seed": 1})
    before = await snapshot(conn)
    for delta, needle in MALFORMED:
        with pytest.raises(asyncpg.PostgresError) as raised:
            await apply_delta(conn, delta)
        assert raised.value.sqlstate == "SM001", delta
        assert needle in str(raised.value), delta
    assert await snapshot(conn) == before


# ---------------------------------------------------------------- type mismatches

SEED = {"s": "text", "n": 5, "o": {"k": 1}, "arr": [1], "nul": None, "tasks": {"T": {"s": "a", "list": [1]}}}

# (delta, the path the error must name); each is tried against its own copy of SEED
MISMATCHES = [
    ({"s": {"$inc": 1}}, "s"),
    ({"tasks.T.s": {"$inc": 1}}, "tasks.T.s"),
    ({"nul": {"$inc": 1}}, "nul"),
    ({"o": {"$add": [1]}}, "o"),
    ({"tasks.T": {"$add": [1]}}, "tasks.T"),
    ({"o.k": {"$addToSet": 2}}, "o.k"),
    ({"n": {"$push": 1}}, "n"),
    ({"tasks.T.s": {"$push": {"$each": [1], "$slice": -1}}}, "tasks.T.s"),
    ({"n": {"$max": "z"}}, "n"),
    ({"s": {"$min": 1}}, "s"),
    ({"tasks.T.list": {"$max": 1}}, "tasks.T.list"),
    ({"n": {"$remove": [5]}}, "n"),
    ({"tasks": {"$inc": 1}}, "tasks"),
    ({"tasks": {"$push": 1}}, "tasks"),
    ({"tasks": {"$max": 1}}, "tasks"),
    ({"s.b": 1}, "s.b"),
    ({"n.b.c": {"$inc": 1}}, "n.b.c"),
    ({"arr.k": 1}, "arr.k"),
    ({"tasks.T.s.x": {"$merge": {"a": 1}}}, "tasks.T.s.x"),
    ({"tasks.T.list.x": 1}, "tasks.T.list.x"),
    # the whole delta is rejected, also the parts that would have worked
    ({"fresh": 1, "tasks.NEW": {"a": 1}, "s": {"$inc": 1}}, "s"),
]


async def test_type_mismatch_raises_sm002_naming_the_path_and_applies_nothing(conn, database_url):
    for case, _ in enumerate(MISMATCHES):
        await apply_delta(conn, SEED, fsa=f"case{case}")
    async with listening(database_url) as feed:
        failures = []
        for case, (delta, path) in enumerate(MISMATCHES):
            fsa = f"case{case}"
            before = await snapshot(conn, fsa=fsa)
            try:
                await apply_delta(conn, delta, fsa=fsa)
            except asyncpg.PostgresError as exc:
                if exc.sqlstate != "SM002" or f'"{path}"' not in str(exc) or json.loads(exc.detail)["path"] != path:
                    failures.append((delta, exc.sqlstate, str(exc), exc.detail))
            else:
                failures.append((delta, "applied"))
            if await snapshot(conn, fsa=fsa) != before:
                failures.append((delta, "changed the state or the log"))
        assert failures == []
        await feed.assert_silent()


HTTP_MISMATCHES = [
    ({"s": {"$inc": 1}}, "s"),
    ({"o": {"$add": [1]}}, "o"),
    ({"n": {"$push": 1}}, "n"),
    ({"n": {"$max": "z"}}, "n"),
    ({"tasks": {"$inc": 1}}, "tasks"),
    ({"s.b": 1}, "s.b"),
]


async def test_type_mismatch_over_http_is_a_422_problem_and_applies_nothing(client):
    assert (await client.post("/state/t/f/delta", json=SEED)).status_code == 200
    for delta, path in HTTP_MISMATCHES:
        response = await client.post("/state/t/f/delta", json=delta)
        problem = assert_problem(response, 422, "type-mismatch")
        assert problem["path"] == path
        assert f'"{path}"' in problem["detail"]
    after = (await client.get("/state/t/f")).json()
    assert after["version"] == 1
    assert after["state"] == SEED
    log = (await client.get("/state/t/f/deltas")).json()
    assert [d["version"] for d in log["deltas"]] == [1]


# ---------------------------------------------------------------- bookkeeping


async def test_entry_count_matches_the_entries_after_every_delta(conn):
    deltas = [
        {"tasks": {"A": {"s": 1}, "B": 2}, "n": 1, "e": {}},
        {"tasks.C.x": 1, "n": {"$inc": 2}, "list": {"$push": 1}},
        {"tasks": {"$merge": {"A": None, "D": {"q": 1}, "NOPE": None}}},
        {"n": {"$merge": {"z": 1}}, "e.k": 1},
        {"tasks.B": {"$unset": True}, "list": {"$remove": 1}, "missing": {"$unset": True}},
        {"tasks": {"$unset": True}, "n": "scalar again"},
        {"fresh": {"$merge": {"a": 1, "b": 2}}, "s": {"$add": [1]}},
        {"fresh": {"x": 1}, "e": 5},
        {"fresh.x": {"$unset": True}, "zz": {"$pull": 1}},
    ]
    for delta in deltas:
        await apply_delta(conn, delta)
        counted = await conn.fetchval(
            "SELECT count(*) FROM sms.entries WHERE tenant_id = $1 AND fsa_id = $2", TENANT, FSA
        )
        recorded = await conn.fetchval(
            "SELECT entry_count FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", TENANT, FSA
        )
        assert recorded == counted, delta
    assert await document(conn) == {"n": "scalar again", "e": 5, "list": [], "fresh": {}, "s": [1]}
