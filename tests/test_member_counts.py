"""sms.member_counts: the counts behind slices of a whole collection or key family.

A slice like `task:*` or `task:DESIGN_*` takes its total, its counts by status and its cache
fingerprint from one row of sms.member_counts instead of counting its matches. These tests hold
those rows to a model computed from the document itself, after every kind of write (members
inserted, changed, removed, collections set, merged and removed whole, rollbacks) and under
concurrent writers, and hold the counted slices to slices counted the slow way over the same
entries.
"""

from __future__ import annotations

import asyncio
import json
import random
from typing import Any

import asyncpg
import pytest
from helpers import apply_delta, document, expected_counts, key_family

T, F = "t", "f"
STATUSES = ("OPEN", "IN_PROGRESS", "DONE")


async def stored_counts(conn: asyncpg.Connection, tenant: str = T, fsa: str = F):
    rows = await conn.fetch(
        "SELECT collection, family, members, statuses::text FROM sms.member_counts"
        " WHERE tenant_id = $1 AND fsa_id = $2",
        tenant,
        fsa,
    )
    counted = {(r["collection"], r["family"]): (r["members"], json.loads(r["statuses"])) for r in rows}
    # a family whose members are all gone keeps its row (its version fingerprints the change)
    emptied = {key: value for key, value in counted.items() if value[0] == 0}
    assert all(statuses == {} for _, statuses in emptied.values()), emptied
    return {key: value for key, value in counted.items() if value[0] > 0}


async def assert_counts_match(conn: asyncpg.Connection, tenant: str = T, fsa: str = F) -> None:
    assert await stored_counts(conn, tenant, fsa) == expected_counts(await document(conn, tenant, fsa))


@pytest.mark.parametrize(
    "member, family",
    [
        ("DESIGN_001", "design_"),
        ("latency_ms_p50", "latency_"),
        ("SKU-7", "sku-"),
        ("a.b", "a."),
        ("_x", "_"),
        ("100%", "100%"),
        ("DesignBot", None),
        ("", None),
        ("ÄRGER_1", "Ä"),
    ],
)
async def test_key_family(conn, member, family):
    assert key_family(member) == family
    assert await conn.fetchval("SELECT sms.key_family($1)", member) == family


@pytest.mark.parametrize(
    "spec, family",
    [
        ("task:*", ""),
        ("tasks", ""),
        ("resources.*", ""),
        ("task:DESIGN_*", "design_"),
        ("task:design_*", "design_"),
        ("flags:100%*", "100%"),
        ("task:DES*", None),  # not a whole family: DESK_1 would match too
        ("task:DESIGN_0*", None),
        ("task:DESIGN_?", None),
        ("task:*_001", None),
        ("task:DESIGN_", None),  # no wildcard: the key itself
        ("tasks.DESIGN_001", None),
        ("tasks.*.status", ""),  # counted only when read without a path: see read_slice_parts
    ],
)
async def test_parse_slice_names_the_family_a_glob_covers(conn, spec, family):
    parts = json.loads(await conn.fetchval("SELECT sms.parse_slice($1)::text", spec))
    assert parts[0]["family"] == family


async def write(conn: asyncpg.Connection, delta: dict[str, Any]) -> int | None:
    """Applies the delta; its version, or None when it was refused (a write through a scalar)."""
    try:
        return (await apply_delta(conn, delta))["version"]
    except asyncpg.PostgresError as exc:
        assert exc.sqlstate == "SM002", exc
        return None


def random_delta(rng: random.Random) -> dict[str, Any]:
    """A delta over `tasks` (families design_, test_, none) and `flags` (mixed case keys)."""
    key = rng.choice(["DESIGN_", "design_", "TEST-", "Bot", "x.y", "A_"]) + str(rng.randrange(6))
    collection = rng.choice(["tasks", "tasks", "flags"])
    at = f"{collection}.{key.replace('.', chr(92) + '.')}"
    roll = rng.randrange(10)
    if roll < 3:
        return {at: {"status": rng.choice(STATUSES), "team": rng.choice("ab")}}
    if roll < 5:
        return {f"{at}.status": rng.choice([*STATUSES, 7, None])}
    if roll < 6:
        return {at: {"$unset": True}}
    if roll < 7:
        return {f"{at}.status": {"$unset": True}}
    if roll < 8:
        patch = {f"{rng.choice(['DESIGN_', 'Bot'])}{i}": rng.choice([None, {"status": "OPEN"}, 3]) for i in range(3)}
        return {collection: {"$merge": patch}}
    if roll < 9:
        return {collection: {f"DESIGN_{i}": {"status": rng.choice(STATUSES)} for i in range(rng.randrange(4))}}
    return {collection: rng.choice([{"$unset": True}, 5, []])}


async def test_counts_follow_every_kind_of_write(conn):
    rng = random.Random(20261124)
    refused = 0
    for step in range(150):
        written = await write(conn, random_delta(rng))
        refused += written is None
        await assert_counts_match(conn)
        if step % 50 == 49:
            # a rollback writes the old values back through the same merge
            latest = await conn.fetchval("SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", T, F)
            await conn.fetchval("SELECT sms.rollback($1, $2, $3)::text", T, F, rng.randrange(1, latest))
            await assert_counts_match(conn)
    assert refused < 100  # most writes applied
    await conn.fetchval(
        "SELECT sms.replace_state($1, $2, $3::jsonb)::text",
        T,
        F,
        json.dumps({"tasks": {"DESIGN_1": {"status": "DONE"}, "Bot": {}}, "n": 1}),
    )
    await assert_counts_match(conn)


async def test_counts_hold_under_concurrent_writers(database_url, conn):
    """20 connections writing one state at once: the merge's state lock orders the count updates."""

    async def writer(seed: int) -> int:
        rng = random.Random(seed)
        writer_conn = await asyncpg.connect(database_url)
        try:
            await writer_conn.execute("SET sms.notify = off")
            return sum([await write(writer_conn, random_delta(rng)) is not None for _ in range(15)])
        finally:
            await writer_conn.close()

    applied = sum(await asyncio.gather(*(writer(seed) for seed in range(20))))
    assert applied > 150
    latest = await conn.fetchval("SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2", T, F)
    assert latest == applied
    await assert_counts_match(conn)


async def test_count_members_recounts_what_the_merge_kept(conn):
    rng = random.Random(5)
    for _ in range(60):
        await write(conn, random_delta(rng))
    kept = await stored_counts(conn)
    for collection in ("tasks", "flags"):
        await conn.execute("SELECT sms.count_members($1, $2, $3, 0)", T, F, collection)
    assert await stored_counts(conn) == kept


READ_PARTS = "SELECT sms.read_slice_parts($1, $2, sms.parse_slice($3), $4, $5, $6::jsonpath)::text"
SPECS = ["task:*", "tasks", "task:design_*", "task:TEST-*", "flags:a_*", "flags:*", "task:DES*", "task:*bot*"]


async def test_counted_slices_equal_slices_counted_over_their_entries(conn):
    """`where $` holds for every entry but makes read_slice_parts count over the entries: both
    ways must give the same total, status counts, members and slice."""
    rng = random.Random(11)
    for round_ in range(6):
        for _ in range(25):
            await write(conn, random_delta(rng))
        for spec in SPECS:
            for k in (None, 1, 3):
                for order in ("key", "recent"):
                    counted = json.loads(await conn.fetchval(READ_PARTS, T, F, spec, k, order, None))
                    scanned = json.loads(await conn.fetchval(READ_PARTS, T, F, spec, k, order, "$"))
                    assert counted == scanned, (round_, spec, k, order)


async def test_key_order_is_folded_then_exact(conn):
    await apply_delta(conn, {"flags": {"b": 1, "B": 2, "a": 3, "A": 4, "a_1": 5, "A_0": 6}})
    read = json.loads(await conn.fetchval(READ_PARTS, T, F, "flags:*", None, "key", None))
    assert read["parts"][0]["members"] == ["A", "a", "A_0", "a_1", "B", "b"]
    first = json.loads(await conn.fetchval(READ_PARTS, T, F, "flags:*", 3, "key", None))
    assert first["parts"][0]["members"] == ["A", "a", "A_0"]
    assert first["total"] == 6 and first["truncated"]


# the recent order the slow way: every candidate sorted
RECENT_REFERENCE = """
    SELECT coalesce(jsonb_agg(s.member ORDER BY s.version DESC, lower(s.member COLLATE "C"), s.member COLLATE "C"),
                    '[]')::text
      FROM (SELECT s.member, s.version FROM sms.slice_entries($1, $2, (sms.parse_slice($3)) -> 0) s
             ORDER BY s.version DESC, lower(s.member COLLATE "C"), s.member COLLATE "C" LIMIT $4) s"""


async def test_recent_order_walked_from_history_equals_sorting_every_candidate(conn):
    """sms.recent_entries walks the history newest first; whatever the writes (members changed
    once, one member changed over and over, members removed and written again, collections set
    whole), its first k are the first k of a sort of every candidate."""
    rng = random.Random(3)
    for round_ in range(8):
        for _ in range(20):
            await write(conn, random_delta(rng))
        if round_ % 3 == 1:  # one hot member: the walk meets it again and again
            for i in range(30):
                await write(conn, {"tasks.DESIGN_0": {"status": STATUSES[i % 3]}})
        for spec in ("task:*", "task:design_*", "task:test-*", "flags:*", "flags:a_*"):
            for k in (1, 2, 5):
                read = json.loads(await conn.fetchval(READ_PARTS, T, F, spec, k, "recent", None))
                expected = json.loads(await conn.fetchval(RECENT_REFERENCE, T, F, spec, k))
                assert read["parts"][0]["members"] == expected, (round_, spec, k)
