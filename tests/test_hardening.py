"""Nothing a client sends can break a state, stall the service or earn a 500 (issue 10, items 1–3).

* Numbers are kept within a documented range (absolute value below 10^18, at most 18 decimal
  places); anything beyond, anywhere in any write form, or made by an $inc, is a 422 that names
  the path, and nothing is stored. A state that already holds such a number (from an older
  version) still answers every read route, and its tenant's feed goes on.
* Keys at every depth obey the key limit, nesting is bounded (also with tighter limits, which
  hold in SQL too), ids are no "."/".." and hold no invisible or bidirectional characters, and
  query strings are decoded strictly.
* `where` predicates are bounded (no undefined variables, no nested repetition, at most three
  like_regex), and expensive reads take turns for half of the pool: /health and writes get a
  connection while they run. The largest body within the limits delays no small request.
* Every SQLSTATE the service can meet maps to a documented 4xx or 503.
* A property: any sequence of deltas leaves every read route of the state and of its tenant
  answering 2xx.

Timing is shown by ordering (what completed before what), never by measuring durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import string
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
from helpers import ROOT, apply_delta, assert_problem, serving, sms_env, snapshot
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from app.domain import jsontext
from app.domain.delta import escape_key
from app.errors import from_sqlstate
from app.feed import Feed
from app.settings import Limits

WAIT_SECONDS = 60.0  # the most any bounded wait (a stream, a subprocess) may take; generous
JSON = "application/json"
JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
DELTA = "/state/t/f/delta"
REPLACE = "/state/t/f"

MAX = "999999999999999999.999999999999999999"  # the largest number kept
TINY = "0.000000000000000001"  # the smallest non-zero magnitude kept
SEED = {"n": 1, "s": [1], "m": {"k": 1}, "l": [1]}


def decoded(response: httpx.Response) -> Any:
    """A response's JSON with exact numbers, however long (Python's int() refuses > 4300 digits)."""
    return jsontext.decode(response.content)


async def send(client: Any, url: str, body: bytes | str, content_type: str = JSON, **kwargs: Any) -> httpx.Response:
    """POST `body` exactly as written (numbers keep the text they were written with)."""
    content = body.encode() if isinstance(body, str) else body
    return await client.post(url, content=content, headers={"Content-Type": content_type}, **kwargs)


def nested(levels: int) -> str:
    """JSON text of `levels` arrays nested in each other."""
    return "[" * levels + "]" * levels


# ---------------------------------------------------------------- numbers


async def test_numbers_at_the_bounds_are_accepted_and_read_back_exactly(client, conn):
    """999999999999999999.999999999999999999 and 0.000000000000000001 (and their negatives) are in
    range, at any depth and as an $inc operand; they read back with every digit."""
    body = (
        f'{{"max": {MAX}, "neg_max": -{MAX}, "tiny": {TINY}, "neg_tiny": -{TINY}, "int": 999999999999999999,'
        f' "deep": {{"a": [{MAX}, {{"b": -{TINY}}}]}}, "n": {{"$inc": {MAX}}}}}'
    )
    response = await send(client, DELTA, body)
    assert response.status_code == 200, response.text
    state = decoded(await client.get(REPLACE))["state"]
    assert state == {
        "max": Decimal(MAX),
        "neg_max": Decimal(f"-{MAX}"),
        "tiny": Decimal(TINY),
        "neg_tiny": Decimal(f"-{TINY}"),
        "int": 999999999999999999,
        "deep": {"a": [Decimal(MAX), {"b": Decimal(f"-{TINY}")}]},
        "n": Decimal(MAX),
    }
    stored = await conn.fetchval("SELECT sms.document('t', 'f')::text")
    assert MAX in stored and TINY in stored
    assert (await client.get(f"{REPLACE}?summary=true")).status_code == 200


# (id, url, content type, body, the path the problem names)
OUT_OF_RANGE = [
    ("1e18", DELTA, JSON, '{"x": 1e18}', "x"),
    ("minus-1e18", DELTA, JSON, '{"x": -1e18}', "x"),
    ("1e-19", DELTA, JSON, '{"x": 1e-19}', "x"),
    ("minus-1e-19", DELTA, JSON, '{"x": -0.0000000000000000001}', "x"),
    ("19-decimal-places", DELTA, JSON, '{"x": 1.0000000000000000001}', "x"),
    ("1e4300", DELTA, JSON, '{"x": 1e4300}', "x"),
    ("integer-beyond-64-bits", DELTA, JSON, '{"x": 123456789012345678901234567890}', "x"),
    ("deep-in-a-value", DELTA, JSON, '{"a.b": {"c": [1, {"d": [2, 1e18]}]}}', "a.b"),
    ("set", DELTA, JSON, '{"x": {"$set": {"y": [1e19]}}}', "x"),
    ("inc-operand", DELTA, JSON, '{"n": {"$inc": 1e18}}', "n"),
    ("inc-operand-tiny", DELTA, JSON, '{"n": {"$inc": 1e-19}}', "n"),
    ("max-operand", DELTA, JSON, '{"n": {"$max": 1e19}}', "n"),
    ("min-operand", DELTA, JSON, '{"n": {"$min": -1e19}}', "n"),
    ("add", DELTA, JSON, '{"s": {"$add": [2, 1e19]}}', "s"),
    ("addToSet", DELTA, JSON, '{"s": {"$addToSet": 1e19}}', "s"),
    ("remove", DELTA, JSON, '{"s": {"$remove": [1e19]}}', "s"),
    ("pull", DELTA, JSON, '{"s": {"$pull": 1e19}}', "s"),
    ("push", DELTA, JSON, '{"l": {"$push": 1e19}}', "l"),
    ("push-each", DELTA, JSON, '{"l": {"$push": {"$each": [2, {"v": 1e19}]}}}', "l"),
    ("merge", DELTA, JSON, '{"m": {"$merge": {"k": {"z": 1e19}}}}', "m"),
    ("expect", DELTA, JSON, '{"$expect": {"n": 1e19}, "x": 1}', "$expect"),
    ("beside-a-valid-path", DELTA, JSON, '{"ok": 1, "x": 1e18}', "x"),
    ("replace", REPLACE, JSON, '{"a": {"b": [1e19]}}', "a"),
    ("json-patch-add", DELTA, JSON_PATCH, '[{"op": "add", "path": "/a", "value": {"b": 1e19}}]', "a"),
    ("json-patch-replace", DELTA, JSON_PATCH, '[{"op": "replace", "path": "/n", "value": 1e19}]', "n"),
    ("json-patch-append", DELTA, JSON_PATCH, '[{"op": "add", "path": "/l/-", "value": 1e19}]', "l"),
    (
        "json-patch-test",
        DELTA,
        JSON_PATCH,
        '[{"op": "test", "path": "/n", "value": 1e19}, {"op": "add", "path": "/x", "value": 1}]',
        "$expect",
    ),
    ("merge-patch-nested", DELTA, MERGE_PATCH, '{"m": {"k": 1e19}}', "m"),
    ("merge-patch-top", DELTA, MERGE_PATCH, '{"x": 1e-19}', "x"),
    ("validate", "/validate/delta", JSON, '{"x": 1e18}', "x"),
    ("validate-dry-run", "/validate/delta?tenant_id=t&fsa_id=f", JSON, '{"x": 1e18}', "x"),
]


@pytest.mark.parametrize(
    ("url", "content_type", "body", "path"), [c[1:] for c in OUT_OF_RANGE], ids=[c[0] for c in OUT_OF_RANGE]
)
async def test_a_number_out_of_range_anywhere_is_a_422_naming_the_path_and_nothing_is_stored(
    client, conn, url, content_type, body, path
):
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    response = await send(client, url, body, content_type)
    problem = assert_problem(response, 422, "number-out-of-range")
    assert problem["path"] == path
    assert f'"{path}"' in problem["detail"]
    assert await snapshot(conn) == before


UNPARSEABLE = [
    ("delta-1e-20000", DELTA, JSON, '{"x": 1e-20000}'),
    ("delta-1e200000", DELTA, JSON, '{"x": 1e200000}'),
    ("delta-nested-1e-20000", DELTA, JSON, '{"x": {"$set": [1e-20000]}}'),
    ("replace-1e-20000", REPLACE, JSON, '{"x": 1e-20000}'),
    ("json-patch-1e-20000", DELTA, JSON_PATCH, '[{"op": "add", "path": "/x", "value": 1e-20000}]'),
    ("merge-patch-1e-20000", DELTA, MERGE_PATCH, '{"x": {"y": 1e-20000}}'),
]


@pytest.mark.parametrize(("url", "content_type", "body"), [c[1:] for c in UNPARSEABLE], ids=[c[0] for c in UNPARSEABLE])
async def test_a_number_postgresql_cannot_even_parse_is_a_4xx_and_nothing_is_stored(
    client, conn, url, content_type, body
):
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    response = await send(client, url, body, content_type)
    assert response.status_code in (400, 413, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["type"] in (
        "urn:sms:problem:number-out-of-range",
        "urn:sms:problem:malformed-json",
        "urn:sms:problem:malformed-request",
        "urn:sms:problem:invalid-delta",
        "urn:sms:problem:invalid-value",
        "urn:sms:problem:limit-exceeded",
    )
    assert await snapshot(conn) == before


@pytest.mark.parametrize(
    ("start", "operand"),
    [
        ("999999999999999999", "1"),
        ("-999999999999999999", "-1"),
        (MAX, TINY),
        ("500000000000000000", "500000000000000000"),
    ],
)
async def test_an_inc_whose_result_leaves_the_range_is_refused_and_nothing_changes(client, conn, start, operand):
    """Both terms are in range, their sum is not: a 422 naming the path, the state untouched — over
    HTTP and for SQL callers alike."""
    await send(client, DELTA, f'{{"x": {start}}}')
    before = await snapshot(conn)
    problem = assert_problem(await send(client, DELTA, f'{{"x": {{"$inc": {operand}}}}}'), 422, "number-out-of-range")
    assert problem["path"] == "x"
    assert await snapshot(conn) == before
    with pytest.raises(asyncpg.PostgresError) as raised:
        await conn.fetchval("SELECT sms.apply_delta('t', 'f', $1::jsonb)", f'{{"x": {{"$inc": {operand}}}}}')
    assert raised.value.sqlstate == "22003"
    assert await snapshot(conn) == before


async def test_incs_of_9e17_are_refused_from_the_one_that_would_overflow(client, conn):
    """9e17, then 9e17 more (1.8e18) and again: the first is applied, the ones that would overflow
    are refused, and the state keeps 9e17 at version 1."""
    answers = [await send(client, DELTA, '{"x": {"$inc": 9e17}}') for _ in range(3)]
    assert answers[0].status_code == 200, answers[0].text
    for refused in answers[1:]:
        assert_problem(refused, 422, "number-out-of-range")
    assert await snapshot(conn) == (1, [1], {"x": 900000000000000000})


# The write path tells values and ids that need no look by expressions (sms.needs_check, sms.id_ok)
# and runs the checks that raise (sms.check_number's walk, sms.check_id) only for the others: the
# expression must pass exactly what the check takes, or a bad value would go through unchecked.

NUMBERS = [
    "0",
    "-0.0",
    "1",
    "-1",
    "0.5",
    "999999999999999999",
    "-999999999999999999",
    "999999999999999999.9",
    "1e18",
    "-1e18",
    "1e17",
    "9.99e17",
    "1e-18",
    "-1e-18",
    "1e-19",
    "-1e-19",
    "0.000000000000000001",
    "0.0000000000000000015",
    "0.123456789012345678",
    "0.1234567890123456789",
    "1.50000000000000000000",
    "123456789.123456789",
    "123456789.1234567891",
    "1e100",
    "1e-100",
    "12345678901234567890",
]


@pytest.mark.parametrize("number", NUMBERS)
async def test_the_expression_that_passes_a_number_agrees_with_the_check_that_refuses_it(conn, number):
    needs_check = await conn.fetchval("SELECT sms.needs_check($1::jsonb)", number)
    try:
        await conn.execute("SELECT sms.check_number('x', $1::jsonb)", number)
        refused = False
    except asyncpg.PostgresError as error:
        assert error.sqlstate == "22003"
        refused = True
    assert needs_check == refused
    # and a delta holding it, as a value and as an operand, is taken or refused as the check says
    for delta in (f'{{"x": {number}}}', f'{{"x": {{"$inc": {number}}}}}', f'{{"x": [{number}]}}'):
        if refused:
            with pytest.raises(asyncpg.PostgresError) as raised:
                await conn.fetchval("SELECT sms.normalize_delta($1::jsonb)", delta)
            assert raised.value.sqlstate == "22003"
        else:
            await conn.fetchval("SELECT sms.normalize_delta($1::jsonb)", delta)


async def test_strings_booleans_nulls_and_numbers_in_range_need_no_look_the_rest_do(conn):
    values = ['"s"', "true", "null", "1", '{"a": 1}', "[]", "{}", "[1]", "1e18"]
    looked_at = await conn.fetch("SELECT v, sms.needs_check(v::jsonb) AS n FROM unnest($1::text[]) v", values)
    assert {row["v"]: row["n"] for row in looked_at} == {
        '"s"': False,
        "true": False,
        "null": False,
        "1": False,
        '{"a": 1}': True,
        "[]": True,
        "{}": True,
        "[1]": True,
        "1e18": True,
    }


ID_NAMES = ["tenant_id", "fsa_id", "task_id", "lineage_id", "agent", "actor", "trace_id", "parent_id", "label"]
ID_VALUES = [
    None,
    "",
    "a",
    "acme",
    "a/b",
    ".",
    "..",
    "...",
    "a.b",
    "x" * 128,
    "x" * 129,
    "é" * 64,
    "é" * 65,
    "a\x01b",
    "a\tb",
    "a\u0085b",
    "a\u00adb",
    "a\u200bb",
    "a\u202eb",
    "a\u2066b",
    "a\ufeffb",
    "a\ufffbb",
    "日本",
    "a b",
    "-",
    "a:b",
]


SEGMENTS = {"tenant_id", "fsa_id", "task_id", "lineage_id", "agent"}  # ids that are parts of URL paths
HIDDEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)


def id_taken(name: str, value: str | None) -> bool:
    """DESIGN's rule for ids (sms.check_id), written out here as the test's own oracle."""
    if value is None:
        return True
    segment = name in SEGMENTS
    return not (
        value == ""
        or len(value.encode()) > 128
        or HIDDEN.search(value)
        or (segment and value in (".", ".."))
        or (segment and name != "agent" and "/" in value)
    )


async def test_the_expression_that_passes_an_id_takes_exactly_the_ids_the_rule_allows(conn):
    for name in ID_NAMES:
        for value in ID_VALUES:
            assert await conn.fetchval("SELECT sms.id_ok($1, $2)", name, value) is id_taken(name, value), (name, value)
    # ids of a delta, each checked on the write path
    for field in ("actor", "lineage_id", "trace_id", "parent_id"):
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.fetchval(f"SELECT sms.apply_delta('t', 'f', '{{\"a\": 1}}', p_{field} => $1)", "a\u200bb")
        assert raised.value.sqlstate == "SM007" and field in str(raised.value)
    assert await snapshot(conn) == (0, [], {})


# ---------------------------------------------------------------- a state that already holds a poison number

POISON_OPS = [
    {"path": ["x"], "op": "set", "value": "@BIG@"},
    {
        "path": ["tasks", "T2"],
        "op": "set",
        "value": {
            "title": "poison",
            "status": "OPEN",
            "n": "@NEG@",
            "tiny": "@TINY@",
            "big": "@INT@",
            "frac": "@FRAC@",
        },
    },
]
POISON_NUMBERS = {
    "@BIG@": "1e4300",
    "@NEG@": "-1e4300",
    "@TINY@": "1e-4300",
    "@INT@": "123456789012345678901234567890",
    "@FRAC@": "0.1234567890123456789012345678901",
}


def poison_ops_text() -> str:
    text = json.dumps(POISON_OPS)
    for marker, number in POISON_NUMBERS.items():
        text = text.replace(f'"{marker}"', number)
    return text


async def read_sse(
    http: httpx.AsyncClient,
    url: str,
    seen: list[tuple[str | None, Any]],
    done: Callable[[list[tuple[str | None, Any]]], bool],
) -> None:
    """Reads an SSE stream's change events (id, data with exact numbers) into `seen` until `done`."""
    async with http.stream("GET", url) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        assert response.headers["content-type"].startswith("text/event-stream")
        fields: dict[str, str] = {}
        async for line in sse_lines(response):
            if line == "":
                if fields.get("event", "message") == "change" and "data" in fields:
                    seen.append((fields.get("id"), jsontext.decode(fields["data"])))
                    if done(seen):
                        return
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")


async def sse_lines(response: httpx.Response) -> AsyncIterator[str]:
    """The lines of an event stream as the SSE specification splits them: at CR, LF or CRLF only
    (httpx's aiter_lines also splits at U+2028, U+0085, …, which JSON data may hold)."""
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        *lines, buffer = re.split(rb"\r\n|\r|\n", buffer)
        for line in lines:
            yield line.decode()


async def until(condition: Callable[[], Any], what: str, tasks: list[asyncio.Task] | None = None) -> None:
    """Waits (bounded) for `condition`; a background task that died fails the test with its error."""
    try:
        async with asyncio.timeout(WAIT_SECONDS):
            while True:
                result = condition()
                if asyncio.iscoroutine(result):
                    result = await result
                if result:
                    return
                for task in tasks or []:
                    if task.done():
                        task.result()
                        raise AssertionError(f"a reader stopped while waiting for {what}")
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def versions_of(seen: list[tuple[str | None, Any]], fsa_id: str = "f") -> list[int]:
    return [data["version"] for _, data in seen if data["fsa_id"] == fsa_id]


async def test_a_state_holding_an_out_of_range_number_still_answers_every_read_and_its_feeds_go_on(
    database_url, live_url, conn
):
    """The reproduction "a poison number breaks a state and its tenant's feed for good": a state
    that already holds 1e4300 and its kin (written by the owner through sms.apply_ops, which takes
    normalised ops unchecked, as an older version of the service would have stored them) answers
    2xx on every read route with the numbers exact; the per-state and tenant SSE streams and the
    Feed deliver that change and the ones after it; `sms listen` prints them; an $inc on the
    poison value is a 422, not a 500."""
    await apply_delta(conn, {"x": 1, "tasks": {"T1": {"status": "OPEN", "title": "fine"}}})  # v1
    result = await conn.fetchval(
        "SELECT sms.apply_ops('t', 'f', $1::jsonb, p_actor => 'old-version', p_lineage_id => 'L1')::text",
        poison_ops_text(),
    )
    assert json.loads(result)["version"] == 2
    await apply_delta(conn, {"y": 2, "tasks.T1.status": "DONE"}, p_lineage_id="L1")  # v3
    await apply_delta(conn, {"z": 1}, fsa="g")  # another state of the tenant, after the poison

    big, neg = Decimal("1e4300"), Decimal("-1e4300")
    async with httpx.AsyncClient(base_url=live_url, timeout=httpx.Timeout(WAIT_SECONDS)) as http:
        # an $inc on the poison value would leave the range: refused, not a 500
        refused = await http.post("/state/t/f/delta", json={"x": {"$inc": 1}})
        assert_problem(refused, 422, "number-out-of-range")
        written = await http.post("/state/t/f/delta", json={"w": 4})  # v4, over HTTP
        assert written.status_code == 200, written.text
        assert written.json()["version"] == 4

        full = await http.get("/state/t/f")
        assert full.status_code == 200, full.text
        state = decoded(full)["state"]
        assert state["x"] == big and state["tasks"]["T2"]["n"] == neg
        assert state["tasks"]["T2"]["tiny"] == Decimal("1e-4300")
        assert state["tasks"]["T2"]["big"] == 123456789012345678901234567890
        assert state["tasks"]["T2"]["frac"] == Decimal(POISON_NUMBERS["@FRAC@"])
        at_2 = await http.get("/state/t/f?version=2")
        assert at_2.status_code == 200, at_2.text
        assert decoded(at_2)["state"]["x"] == big
        reads = [
            "/state/t/f?summary=true",
            "/state/t/f?version=1",
            "/state/t/f?version=3",
            "/state/t/f/slice?slice=tasks",
            "/state/t/f/slice?slice=x",
            "/state/t/f/slice?slice=tasks&order=recent&k=1",
            '/state/t/f/slice?slice=tasks&where=@.status == "OPEN"',
            "/state/t/f/slice?slice=tasks&where=@.n < 0",
            "/state/t/f/history?path=x",
            "/state/t/f/history?path=tasks.T2",
            "/state/t/f/history?path=tasks.T2.n",
            "/state/t/f/diff?from=0",
            "/state/t/f/diff?from=1&to=2",
            "/state/t/f/diff?from=2&to=4",
            "/state/t/f/changes?since=0",
            "/state/t/f/changes?since=1",
            "/state/t/f/changes?since=2",
            "/state/t/f/deltas",
            "/state/t/f/deltas?since=1&limit=1",
            "/lineage/L1?tenant_id=t",
        ]
        for url in reads:
            response = await http.get(url)
            assert response.status_code == 200, f"{url}: {response.status_code} {response.text[:500]}"
            decoded(response)  # JSON, whatever its numbers
        diff = decoded(await http.get("/state/t/f/diff?from=1&to=2"))["patch"]
        assert {"op": "replace", "path": "/x", "value": big} in diff
        history = decoded(await http.get("/state/t/f/history?path=x"))["changes"]
        assert [change.get("new") for change in history][-2:] == [big, 1]
        deltas = decoded(await http.get("/state/t/f/deltas"))
        poison_delta = next(delta for delta in deltas["deltas"] if delta["version"] == 2)
        assert poison_delta["ops"][0]["value"] == big

        # the streams replay the poison change and go on live
        state_seen: list = []
        tenant_seen: list = []
        readers = [
            asyncio.create_task(
                read_sse(http, "/state/t/f/events?since=0", state_seen, lambda seen: 5 in versions_of(seen))
            ),
            asyncio.create_task(
                read_sse(http, "/events?tenant=t&since=0", tenant_seen, lambda seen: 5 in versions_of(seen))
            ),
        ]
        try:
            await until(lambda: versions_of(state_seen) == [1, 2, 3, 4], "the state stream's replay", readers)
            await until(
                lambda: versions_of(tenant_seen) == [1, 2, 3, 4] and versions_of(tenant_seen, "g") == [1],
                "the tenant stream's replay",
                readers,
            )
            assert (await http.post("/state/t/f/delta", json={"after": True})).status_code == 200  # v5, live
            async with asyncio.timeout(WAIT_SECONDS):
                await asyncio.gather(*readers)
        finally:
            for reader in readers:
                reader.cancel()
        assert versions_of(state_seen) == versions_of(tenant_seen) == [1, 2, 3, 4, 5]
        poison_event = next(data for _, data in state_seen if data["version"] == 2)
        assert poison_event["ops"][0]["value"] == big

    # the Feed, as a library user subscribes
    async with Feed.connect(database_url) as feed:
        for fsa_id in ("f", None):
            got = []
            async with asyncio.timeout(WAIT_SECONDS):
                async for change in feed.subscribe("t", fsa_id, since=0):
                    got.append((change.fsa_id, change.version))
                    if ("f", 5) in got:
                        break
            assert [v for f, v in got if f == "f"] == [1, 2, 3, 4, 5]

    # `sms listen`, per state and tenant-wide
    for target, count in (("t/f", 5), ("t", 6)):
        lines = await listen_lines(database_url, target, count)
        assert [c["version"] for c in lines if c["fsa_id"] == "f"] == [1, 2, 3, 4, 5], target
        assert next(c for c in lines if c["fsa_id"] == "f" and c["version"] == 2)["ops"][0]["value"] == big


async def listen_lines(database_url: str, target: str, count: int) -> list[dict[str, Any]]:
    """The first `count` lines `sms listen TARGET --since 0` prints, decoded with exact numbers; the
    process must neither crash nor stop printing."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "app.cli",
        "listen",
        target,
        "--since",
        "0",
        env=sms_env(database_url),
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=2**20,
    )
    lines = []
    try:
        for _ in range(count):
            line = await asyncio.wait_for(process.stdout.readline(), WAIT_SECONDS)
            if not line:
                await process.wait()
                error = (await process.stderr.read()).decode()
                raise AssertionError(f"sms listen {target} stopped (exit {process.returncode}): {error[-2000:]}")
            lines.append(jsontext.decode(line))
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()
    return lines


# ---------------------------------------------------------------- keys and nesting

LONG_KEY = "k" * 600

# (id, url, content type, body, the path the problem names)
LONG_KEYS = [
    ("plain-value", DELTA, JSON, {"a": {"b": {LONG_KEY: 1}}}, "a"),
    ("in-an-array", DELTA, JSON, {"a": [1, [{LONG_KEY: 1}]]}, "a"),
    ("set", DELTA, JSON, {"a": {"$set": {"b": {LONG_KEY: 1}}}}, "a"),
    ("merge", DELTA, JSON, {"m": {"$merge": {"k": {LONG_KEY: 1}}}}, "m"),
    ("push", DELTA, JSON, {"l": {"$push": {LONG_KEY: 1}}}, "l"),
    ("add", DELTA, JSON, {"s": {"$add": [{LONG_KEY: 1}]}}, "s"),
    ("expect", DELTA, JSON, {"$expect": {"m": {LONG_KEY: 1}}, "x": 1}, "$expect"),
    ("deep-path", DELTA, JSON, {"m.k2": {"c": {LONG_KEY: 1}}}, "m.k2"),
    ("replace", REPLACE, JSON, {"a": {LONG_KEY: 1}}, "a"),
    ("json-patch", DELTA, JSON_PATCH, [{"op": "add", "path": "/a", "value": {"b": {LONG_KEY: 1}}}], "a"),
    ("merge-patch", DELTA, MERGE_PATCH, {"m": {"x": {LONG_KEY: 1}}}, "m"),
]


@pytest.mark.parametrize(
    ("url", "content_type", "body", "path"), [c[1:] for c in LONG_KEYS], ids=[c[0] for c in LONG_KEYS]
)
async def test_a_long_key_nested_inside_a_value_is_a_422_naming_the_path(client, conn, url, content_type, body, path):
    """The key limit (512 characters) holds at every depth, in every write form."""
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    problem = assert_problem(await send(client, url, json.dumps(body), content_type), 422, "invalid-delta")
    assert problem["path"] == path
    assert "512" in problem["detail"]
    assert await snapshot(conn) == before


async def test_a_key_of_exactly_the_limit_is_accepted_at_any_depth(client, conn):
    key = "k" * 512
    body = {"a": {"b": [{key: {key: 1}}]}, "m": {"$set": {key: 2}}}
    assert (await send(client, DELTA, json.dumps(body))).status_code == 200
    assert (await send(client, REPLACE, json.dumps({"r": {key: 3}}))).status_code == 200


_letters = random.Random(10)
HUGE_KEY = "".join(_letters.choice(string.ascii_letters) for _ in range(200_000))  # incompressible
INTERNAL_NAMES = re.compile(r"pkey|_idx|index|btree|entries", re.IGNORECASE)

HUGE_KEYS = [
    ("delta-path", DELTA, JSON, {HUGE_KEY: 1}),
    ("delta-member", DELTA, JSON, {f"tasks.{HUGE_KEY}": 1}),
    ("nested", DELTA, JSON, {"tasks": {HUGE_KEY: {"status": "OPEN"}}}),
    ("replace-top", REPLACE, JSON, {HUGE_KEY: 1}),
    ("replace-member", REPLACE, JSON, {"tasks": {HUGE_KEY: 1}}),
    ("json-patch", DELTA, JSON_PATCH, [{"op": "add", "path": f"/tasks/{HUGE_KEY}", "value": 1}]),
    ("merge-patch-top", DELTA, MERGE_PATCH, {HUGE_KEY: 1}),
    ("merge-patch-member", DELTA, MERGE_PATCH, {"tasks": {HUGE_KEY: 1}}),
]


@pytest.mark.parametrize(("url", "content_type", "body"), [c[1:] for c in HUGE_KEYS], ids=[c[0] for c in HUGE_KEYS])
async def test_a_200000_character_key_is_a_4xx_that_names_no_internal_index(client, conn, url, content_type, body):
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    response = await send(client, url, json.dumps(body), content_type)
    assert 400 <= response.status_code < 500, response.text[:500]
    assert response.headers["content-type"].startswith("application/problem+json")
    assert not INTERNAL_NAMES.search(response.json()["detail"]), response.json()["detail"]
    assert not INTERNAL_NAMES.search(response.json()["title"])
    assert await snapshot(conn) == before


async def test_a_key_within_a_raised_limit_but_too_large_for_the_index_is_a_413_that_names_no_index(make_client, conn):
    """With SMS_MAX_KEY_LENGTH raised to 10,000, a 5,000-character member key passes the checks and
    meets PostgreSQL's index row limit (54000): a 413 whose detail is the service's own, not the
    server's message naming entries_pkey; nothing stored."""
    key = HUGE_KEY[:5000]
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    async with make_client(limits=Limits(max_key_length=10_000)) as roomy:
        for url, body in ((DELTA, {"tasks": {key: 1}}), (DELTA, {f"tasks.{key}": 1}), (REPLACE, {"tasks": {key: 1}})):
            problem = assert_problem(await send(roomy, url, json.dumps(body)), 413, "limit-exceeded")
            assert not INTERNAL_NAMES.search(problem["detail"]), problem["detail"]
    assert await snapshot(conn) == before


async def test_a_large_key_limit_still_accepts_ordinary_deltas(make_client, conn):
    """SMS_MAX_KEY_LENGTH may be set high (100,000): ordinary deltas with nested objects are still
    applied (the key check must work for any configured limit, not only for small ones)."""
    async with make_client(limits=Limits(max_key_length=100_000)) as roomy:
        response = await send(roomy, DELTA, json.dumps({"a": {"b": 1}, "tasks": {"T1": {"status": "OPEN"}}}))
        assert response.status_code == 200, response.text
    assert (await snapshot(conn))[0] == 1


def around(template: str, inner: str) -> str:
    """`template` with its @ replaced by `inner`."""
    return template.replace("@", inner)


def objects(levels: int) -> str:
    """JSON text of `levels` objects nested in each other."""
    return '{"a":' * levels + "1" + "}" * levels


# (id, url, content type, a body 32 levels deep (the body counting as one, and an operator's
# operand as the value it stands for), the same one level deeper)
DEPTHS = [
    ("arrays", DELTA, JSON, around('{"a": @}', nested(31)), around('{"a": @}', nested(32))),
    ("objects", DELTA, JSON, around('{"a": @}', objects(31)), around('{"a": @}', objects(32))),
    ("set", DELTA, JSON, around('{"a": {"$set": @}}', nested(31)), around('{"a": {"$set": @}}', nested(32))),
    ("push", DELTA, JSON, around('{"l": {"$push": @}}', nested(31)), around('{"l": {"$push": @}}', nested(32))),
    ("replace", REPLACE, JSON, around('{"a": @}', nested(31)), around('{"a": @}', nested(32))),
    (
        "json-patch",
        DELTA,
        JSON_PATCH,
        around('[{"op": "add", "path": "/a", "value": @}]', nested(31)),
        around('[{"op": "add", "path": "/a", "value": @}]', nested(32)),
    ),
    ("merge-patch", DELTA, MERGE_PATCH, around('{"a": @}', nested(31)), around('{"a": @}', nested(32))),
]


@pytest.mark.parametrize(
    ("url", "content_type", "deepest", "too_deep"), [c[1:] for c in DEPTHS], ids=[c[0] for c in DEPTHS]
)
async def test_nesting_beyond_32_levels_is_a_422_and_32_is_accepted(client, conn, url, content_type, deepest, too_deep):
    """A body nested 32 levels deep (itself counting as one) is applied; one level more is a 422
    and stores nothing — whatever the write form."""
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    assert_problem(await send(client, url, too_deep, content_type), 422, "invalid-delta")
    assert await snapshot(conn) == before
    response = await send(client, url, deepest, content_type)
    assert response.status_code == 200, response.text


async def test_tighter_limits_hold_at_every_depth_and_in_sql(make_client, conn):
    """With max_depth=4 and max_key_length=10 the service's SQL (sms.check_value, through the
    settings sms.max_depth / sms.max_key_length) applies them to nested values it never decodes in
    Python; and a SQL caller setting them meets the same limits."""
    await apply_delta(conn, SEED)
    async with make_client(limits=Limits(max_depth=4, max_key_length=10)) as tight:
        accepted = [
            {"a": json.loads(nested(3))},
            {"b": {"k" * 10: {"c": 1}}},
            {"c": {"$set": json.loads(nested(2))}},
        ]
        for body in accepted:
            response = await send(tight, DELTA, json.dumps(body))
            assert response.status_code == 200, (body, response.text)
        before = await snapshot(conn)
        refused = [
            ({"a": json.loads(nested(4))}, "a"),
            ({"b": {"x": {"k" * 11: 1}}}, "b"),
            ({"m": {"$merge": {"k" * 11: 1}}}, "m"),
            ({"c": {"$set": json.loads(nested(4))}}, "c"),
        ]
        for body, path in refused:
            problem = assert_problem(await send(tight, DELTA, json.dumps(body)), 422, "invalid-delta")
            assert problem["path"] == path, body
        assert_problem(await send(tight, DELTA, json.dumps({"k" * 11: 1})), 422, "invalid-delta")
        assert_problem(await send(tight, REPLACE, json.dumps({"r": {"k" * 11: 1}})), 422, "invalid-delta")
        assert await snapshot(conn) == before

    # a SQL caller: the defaults (512, 32) unless the session sets the same settings
    await apply_delta(conn, {"sql": {"k" * 11: json.loads(nested(4))}})
    await conn.execute("SET sms.max_key_length = 10; SET sms.max_depth = 4")
    before = await snapshot(conn)
    for body in ({"sql2": {"k" * 11: 1}}, {"sql2": json.loads(nested(4))}):
        with pytest.raises(asyncpg.PostgresError) as raised:
            await apply_delta(conn, body)
        assert raised.value.sqlstate == "SM001"
    with pytest.raises(asyncpg.PostgresError) as raised:
        await conn.fetchval("SELECT sms.replace_state('t', 'f', $1::jsonb)", json.dumps({"r": {"k" * 11: 1}}))
    assert raised.value.sqlstate == "SM001"
    assert await snapshot(conn) == before


# ---------------------------------------------------------------- ids and query strings

# (id, the id as text, the id percent-encoded for a URL path)
BAD_IDS = [
    ("dot", ".", "%2E"),
    ("dot-dot", "..", "%2E%2E"),
    ("zero-width-space", "a\u200bb", "a%E2%80%8Bb"),
    ("right-to-left-override", "\u202eabc", "%E2%80%AEabc"),
    ("byte-order-mark", "x\ufeff", "x%EF%BB%BF"),
    ("soft-hyphen", "soft\u00adhyphen", "soft%C2%ADhyphen"),
    ("left-to-right-isolate", "\u2066iso", "%E2%81%A6iso"),
]
PATH_ROUTES = [
    ("GET", "/state/{id}/f"),
    ("GET", "/state/t/{id}"),
    ("POST", "/state/{id}/f/delta"),
    ("POST", "/state/t/{id}/delta"),
    ("POST", "/state/t/{id}"),
    ("GET", "/state/t/{id}/slice?slice=tasks"),
    ("GET", "/state/t/{id}/history?path=a"),
    ("GET", "/state/t/{id}/deltas"),
    ("GET", "/state/t/{id}/events"),
    ("POST", "/tasks/t/f/{id}/comment"),
    ("GET", "/tasks/t/f/{id}/comments"),
    ("GET", "/lineage/{id}?tenant_id=t"),
    ("GET", "/lineage/L1?tenant_id={id}"),
    ("GET", "/events?tenant={id}"),
]


@pytest.mark.parametrize(("text", "encoded"), [b[1:] for b in BAD_IDS], ids=[b[0] for b in BAD_IDS])
async def test_ids_that_are_dots_or_hold_invisible_or_bidirectional_characters_are_a_422(client, conn, text, encoded):
    await apply_delta(conn, {"tasks": {"T1": {"status": "OPEN"}}})
    before = await snapshot(conn)
    for method, template in PATH_ROUTES:
        url = template.format(id=encoded)
        body = {"body": "hi", "author": "me"} if "comment" in url else {"a": 1}
        response = await client.request(method, url, json=body if method == "POST" else None)
        problem = assert_problem(response, 422, "invalid-id")
        assert problem["field"] in ("tenant_id", "fsa_id", "task_id", "lineage_id", "tenant"), (url, problem)
    assert await conn.fetchval("SELECT count(*) FROM sms.states") == 1
    assert await conn.fetchval("SELECT count(*) FROM sms.task_comments") == 0
    assert await snapshot(conn) == before


@pytest.mark.parametrize(("text", "encoded"), [b[1:] for b in BAD_IDS[2:]], ids=[b[0] for b in BAD_IDS[2:]])
@pytest.mark.parametrize("param", ["actor", "lineage_id"])
async def test_actor_and_lineage_ids_with_invisible_or_bidirectional_characters_are_a_422(
    client, conn, param, text, encoded
):
    before = await snapshot(conn)
    for url in (DELTA, REPLACE, "/validate/delta?tenant_id=t&fsa_id=f"):
        joiner = "&" if "?" in url else "?"
        problem = assert_problem(await send(client, f"{url}{joiner}{param}={encoded}", '{"a": 1}'), 422, "invalid-id")
        assert problem["field"] == param
    assert await snapshot(conn) == before


@pytest.mark.parametrize("lineage", [".", ".."])
async def test_a_lineage_id_that_its_route_cannot_address_is_refused_on_write(client, conn, lineage):
    """GET /lineage/{lineage_id} refuses "." and "..", which URL normalisation removes; a write
    must not create a lineage that can never be read back there."""
    encoded = lineage.replace(".", "%2E")
    assert_problem(await client.get(f"/lineage/{encoded}?tenant_id=t"), 422, "invalid-id")
    before = await snapshot(conn)
    response = await send(client, f"{DELTA}?lineage_id={encoded}", '{"a": 1}')
    assert_problem(response, 422, "invalid-id")
    assert await snapshot(conn) == before


@pytest.mark.parametrize("text", [b[1] for b in BAD_IDS], ids=[b[0] for b in BAD_IDS])
async def test_sql_refuses_the_same_ids_for_sql_callers(conn, text):
    """sms.check_id, behind every SQL entry point: SM007 for path-segment ids that are dots or hold
    invisible or bidirectional characters, and for actors and lineages holding such characters."""
    await apply_delta(conn, {"tasks": {"T1": {"status": "OPEN"}}})
    before = await snapshot(conn)
    calls = [
        ("SELECT sms.apply_delta($1, 'f', '{\"a\": 1}')", text),
        ("SELECT sms.apply_delta('t', $1, '{\"a\": 1}')", text),
        ("SELECT sms.replace_state('t', $1, '{\"a\": 1}')", text),
        ("SELECT sms.add_comment('t', 'f', $1, 'me', 'hi')", text),
        ("SELECT sms.check_id('tenant_id', $1)", text),
        ("SELECT sms.check_id('task_id', $1)", text),
    ]
    if text not in (".", ".."):  # dots are refused as path segments only
        calls += [
            ("SELECT sms.apply_delta('t', 'f', '{\"a\": 1}', p_actor => $1)", text),
            ("SELECT sms.apply_delta('t', 'f', '{\"a\": 1}', p_lineage_id => $1)", text),
            ("SELECT sms.check_id('actor', $1)", text),
        ]
    for query, arg in calls:
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.fetchval(query, arg)
        assert raised.value.sqlstate == "SM007", query
    assert await snapshot(conn) == before


@pytest.mark.parametrize(
    "query",
    ["actor=%ff%fe", "lineage_id=%c3%28", "pillar=%ff", "actor=ok&note=%e2%82", "delta_id=%80"],
)
async def test_invalid_utf8_in_a_query_string_is_a_400_and_nothing_is_stored(client, conn, query):
    """Query parameters are decoded strictly: bytes that are no UTF-8 are a 400, never replacement
    characters stored as an actor, lineage or meta value."""
    before = await snapshot(conn)
    assert_problem(await send(client, f"{DELTA}?{query}", '{"a": 1}'), 400, "malformed-request")
    assert_problem(await send(client, f"{REPLACE}?{query}", '{"a": 1}'), 400, "malformed-request")
    assert await snapshot(conn) == before
    assert_problem(await client.get(f"/state/t/f/slice?slice=tasks&{query}"), 400, "malformed-request")
    assert_problem(await client.get("/state/t/f/slice?slice=%ff"), 400, "malformed-request")
    assert await conn.fetchval("SELECT count(*) FROM sms.deltas WHERE actor LIKE '%\ufffd%'") == 0


# ---------------------------------------------------------------- where predicates


@pytest.fixture
async def tasks_state(conn) -> None:
    await apply_delta(
        conn,
        {"tasks": {f"T{i}": {"title": f"task {i}", "status": "OPEN" if i % 2 else "DONE", "n": i} for i in range(20)}},
    )


async def test_an_undefined_variable_in_a_where_predicate_is_a_400(client, tasks_state):
    for where in ("@.n == $x", '@.n > $undefined && @.status == "OPEN"'):
        response = await client.get("/state/t/f/slice", params={"slice": "tasks", "where": where})
        assert_problem(response, 400, "invalid-predicate")


@pytest.mark.parametrize(
    "pattern",
    [
        "(.*){1,100}(.*){1,100}x",
        "(a+)+b",
        "(x*)*y",
        "(.+)*z",
        "(a?){25}a{25}",
        "((.*)){1,100}((.*)){1,100}x",
        "((ab)*)+c",
    ],
)
async def test_a_like_regex_with_nested_repetition_is_refused_at_once(client, tasks_state, pattern):
    """The reproduction's pattern and its kin can take exponential time: refused before any query
    (a 400 invalid-slice), 24 of them at once too, and the service stays available."""
    where = f'@.title like_regex "{pattern}"'
    answers = await asyncio.gather(
        *(client.get("/state/t/f/slice", params={"slice": "tasks", "where": where}) for _ in range(24))
    )
    for response in answers:
        assert_problem(response, 400, "invalid-slice")
    assert (await client.get("/health")).status_code == 200


async def test_at_most_three_like_regex_in_a_predicate(client, tasks_state):
    three = " || ".join(f'@.title like_regex "task {i}$"' for i in range(3))
    response = await client.get("/state/t/f/slice", params={"slice": "tasks", "where": three})
    assert response.status_code == 200, response.text
    assert response.json()["total"] == 3
    four = three + ' || @.title like_regex "task 3$"'
    assert_problem(await client.get("/state/t/f/slice", params={"slice": "tasks", "where": four}), 400, "invalid-slice")


# ---------------------------------------------------------------- admission control

# A pattern without nested repetition that still costs a while on long titles: three of them per
# predicate (the most allowed); each request varies its last letter so no cache answers it.
_SLOW = "(a|b)" + ".{0,250}(a|b)" * 16
BIG_TASKS = 5000


def slow_where(number: int) -> str:
    letter = string.ascii_lowercase[number % 20 + 3]
    return " || ".join(f'@.title like_regex "{_SLOW}{letter}{i}"' for i in range(3))


async def slice_queries(conn: asyncpg.Connection) -> set[tuple[int, Any]]:
    """The slice queries running in PostgreSQL now: (backend pid, start of the query)."""
    rows = await conn.fetch(
        """SELECT pid, query_start FROM pg_stat_activity
            WHERE datname = current_database() AND pid <> pg_backend_pid() AND state = 'active'
              AND query LIKE '%sms.read_slice%'"""
    )
    return {(row["pid"], row["query_start"]) for row in rows}


async def running_slices(conn: asyncpg.Connection) -> int:
    return len(await slice_queries(conn))


async def test_expensive_reads_leave_connections_for_health_and_writes(settings, conn):
    """The reproduction "a few cheap requests exhaust the pool": with a pool of 4 and expensive
    slices allowed to run long, 12 concurrent ones hold at most half of the pool (2 running in
    PostgreSQL, the rest waiting their turn), and meanwhile /health and writes are answered — they
    complete before any of the expensive reads does, and while the same expensive queries still run in
    PostgreSQL (which are then cancelled)."""
    await conn.execute(
        """SELECT sms.replace_state('adm', 'big', jsonb_build_object('tasks',
               (SELECT jsonb_object_agg('T' || i, jsonb_build_object('title', repeat('ab', 1000), 'status', 'OPEN'))
                  FROM generate_series(1, $1::int) i)))""",
        BIG_TASKS,
    )
    custom = replace(settings, pool_min_size=4, pool_max_size=4, statement_timeout_ms=600_000, where_timeout_ms=600_000)
    completed: list[str] = []
    most_running = 0

    async with serving(custom) as url, httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0)) as http:

        async def expensive(number: int) -> httpx.Response:
            response = await http.get(
                "/state/adm/big/slice", params={"slice": "tasks", "where": slow_where(number), "k": 1}
            )
            completed.append(f"slice {number}")
            return response

        async def cheap(name: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
            response = await http.request(method, path, **kwargs)
            completed.append(name)
            return response

        async def sample() -> bool:
            nonlocal most_running
            running = await running_slices(conn)
            most_running = max(most_running, running)
            return running >= 2

        reads = [asyncio.create_task(expensive(number)) for number in range(12)]
        try:
            await until(sample, "the expensive reads to run", reads)
            for _ in range(20):  # let the rest arrive and queue (or, unguarded, take the pool)
                await sample()
                await asyncio.sleep(0.05)
            running_before = await slice_queries(conn)
            answers = await asyncio.gather(
                cheap("health", "GET", "/health"),
                cheap("write", "POST", "/state/adm/small/delta", json={"n": {"$inc": 1}}),
                cheap("write 2", "POST", "/state/adm/other/delta", json={"n": {"$inc": 1}}),
                cheap("health 2", "GET", "/health"),
            )
            running_after = await slice_queries(conn)
            await sample()
            assert [a.status_code for a in answers] == [200, 200, 200, 200], [a.text for a in answers]
            # none of them waited for an expensive read to end: not its answer, nor its query
            assert running_before and running_before <= running_after, (running_before, running_after)
            assert sorted(completed) == ["health", "health 2", "write", "write 2"], completed
        finally:
            # end the expensive reads: cancel whatever runs in PostgreSQL until every one answered
            while not all(read.done() for read in reads):
                most_running = max(most_running, await running_slices(conn))
                await conn.execute(
                    """SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                        WHERE datname = current_database() AND pid <> pg_backend_pid()
                          AND query LIKE '%sms.read_slice%'"""
                )
                await asyncio.sleep(0.05)
        for read in reads:
            assert read.result().status_code in (200, 503), read.result().text
    assert most_running <= custom.pool_max_size // 2
    assert await conn.fetchval("SELECT version FROM sms.states WHERE tenant_id = 'adm' AND fsa_id = 'small'") == 1


# ---------------------------------------------------------------- the largest body beside small requests


def largest_body(last: str | None = None, arrays: int = 8_000) -> bytes:
    """The largest body of the reproduction's shape within every limit: `arrays` arrays nested 30
    deep (31 with the delta) — 8,000 of them come close to SMS_MAX_VALUES; with `last`, that JSON
    text as the last of them instead."""
    items = [nested(29)] * arrays
    if last is not None:
        items[-1] = last
    body = ('{"x": [' + ",".join(items) + "]}").encode()
    assert len(body) <= Limits().max_body_bytes
    return body


async def test_the_reproductions_8_mb_body_is_refused_at_once_for_its_values(client, conn):
    """The reproduction: 130,000 arrays nested 30 deep, 7.7 MB (within the body limit) but 3.9
    million values — more than PostgreSQL could parse and check within the statement timeout. It is
    a 413 counted from its bytes, before anything is parsed; nothing is stored."""
    body = largest_body(arrays=130_000)
    assert Limits().max_values < body.count(b"[") and len(body) <= Limits().max_body_bytes
    await apply_delta(conn, SEED)
    before = await snapshot(conn)
    problem = assert_problem(await send(client, "/state/t/f/delta", body), 413, "limit-exceeded")
    assert "values" in problem["detail"]
    assert await snapshot(conn) == before


@pytest.mark.parametrize(
    ("last", "outcomes"),
    [(None, (200, 413, 422, 503)), (nested(32), (422, 503))],
    ids=["largest-accepted-shape", "refused-at-its-very-end"],
)
async def test_the_largest_body_delays_no_small_request(live_url, conn, last, outcomes):
    """The "Done when" latency check: the largest body within the limits is sent, and just after it
    has been handed over, 20 small reads and writes on other states; every small one completes
    before the big one does (by order of completion).

    The second body is the same with its last array nested too deep: whoever checks it must read
    it all before refusing it, and then answers at once. Had the service checked it on its event
    loop, the small requests would have waited and completed after it; the database's own time on
    the first body (which may be long) cannot hide such a wait here."""
    for number in range(10):
        await apply_delta(conn, {"n": number}, tenant="lat", fsa=f"s{number}")
    body = largest_body(last)
    where = urlsplit(live_url)
    completed: list[str] = []

    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    head = (
        f"POST /state/lat/big/delta HTTP/1.1\r\nHost: {where.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()

    async def big_answer() -> bytes:
        answer = await reader.read()
        completed.append("big")
        return answer

    try:
        writer.write(head + body)
        await writer.drain()
        await until(lambda: writer.transport.get_write_buffer_size() == 0, "the big body to be handed over")
        big = asyncio.create_task(big_answer())
        async with httpx.AsyncClient(base_url=live_url, timeout=httpx.Timeout(WAIT_SECONDS)) as http:

            async def small(name: str, method: str, path: str, **kwargs: Any) -> int:
                response = await http.request(method, path, **kwargs)
                completed.append(name)
                return response.status_code

            smalls = []
            for number in range(10):
                smalls.append(small(f"read {number}", "GET", "/health" if number % 3 == 0 else f"/state/lat/s{number}"))
                smalls.append(small(f"write {number}", "POST", f"/state/lat/s{number}/delta", json={"n": {"$inc": 1}}))
            statuses = await asyncio.gather(*smalls)
            assert statuses == [200] * 20
            answer = await asyncio.wait_for(big, WAIT_SECONDS)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    assert completed[-1] == "big" and len(completed) == 21, completed
    status = int(answer.split(b" ", 2)[1])
    assert status in outcomes, answer[:500]  # what the database made of it; see the next test


async def test_the_largest_body_within_the_limits_gets_a_definite_answer(client, conn):
    """The largest body within the limits is either applied or refused (a 4xx): not a 503 that
    tells the client to retry what can never succeed (with the default statement timeout)."""
    response = await send(client, "/state/lat/big/delta", largest_body())
    assert response.status_code == 200 or 400 <= response.status_code < 500, response.text[:500]


# ---------------------------------------------------------------- SQLSTATE classes

DOCUMENTED_STATUSES = {400, 401, 403, 404, 409, 413, 415, 422, 429, 503}
POSTGRES_CLASSES = ("08", "22", "23", "40", "42", "53", "54", "55", "57", "58", "XX")


def raised_in_sql() -> set[str]:
    """Every ERRCODE the service's SQL raises (codes and condition names)."""
    found = set()
    for path in sorted((ROOT / "sql").glob("*.sql")):
        found |= set(re.findall(r"ERRCODE\s*=\s*'([^']+)'", path.read_text()))
    return found


def postgres_codes() -> set[str]:
    """Every SQLSTATE PostgreSQL defines in the classes it raises at this service (as asyncpg
    knows them), and the bare class codes."""
    codes = {cls + "000" for cls in POSTGRES_CLASSES}
    stack = [asyncpg.PostgresError]
    while stack:
        error = stack.pop()
        stack.extend(error.__subclasses__())
        code = getattr(error, "sqlstate", None)
        if isinstance(code, str) and code[:2] in POSTGRES_CLASSES:
            codes.add(code)
    return codes


async def test_every_sqlstate_the_service_can_meet_maps_to_a_documented_4xx_or_503(conn):
    names = raised_in_sql()
    assert {"SM001", "22003", "SM007", "SM009"} <= names
    codes = set()
    for name in names:  # PostgreSQL resolves condition names (insufficient_privilege → 42501)
        with pytest.raises(asyncpg.PostgresError) as raised:
            await conn.execute(f"DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{name}'; END $$")
        codes.add(raised.value.sqlstate)
    codes |= postgres_codes()
    assert len(codes) > 100
    unmapped, undocumented = [], []
    for code in sorted(codes):
        problem = from_sqlstate(code, "message", None)
        if problem is None:
            unmapped.append(code)
        elif problem.status not in DOCUMENTED_STATUSES or not (400 <= problem.status < 500 or problem.status == 503):
            undocumented.append((code, problem.status))
    assert unmapped == [] and undocumented == []


def test_a_too_large_value_problem_does_not_carry_the_servers_message():
    message = 'index row size 200016 exceeds btree version 4 maximum 2704 for index "entries_pkey"'
    problem = from_sqlstate("54000", message, None)
    assert problem is not None and problem.status == 413
    assert "entries_pkey" not in problem.detail and "btree" not in problem.detail
    assert "entries_pkey" not in json.dumps(problem.to_dict())


# ---------------------------------------------------------------- property: every read answers 2xx

NUMBERS = [MAX, f"-{MAX}", TINY, f"-{TINY}", "999999999999999999", "-999999999999999999", "0", "1e17", "-1.5"]
numbers = (
    st.sampled_from(NUMBERS).map(Decimal)
    | st.integers(-(10**18) + 1, 10**18 - 1)
    | st.decimals(min_value=-(10**17), max_value=10**17, places=18, allow_nan=False, allow_infinity=False)
)
keys = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00")
    | st.sampled_from([".", "\\", "*", "?", "/", "\u202e", "\u200b", "é", "字", "🙂"]),
    min_size=1,
    max_size=6,
).filter(lambda k: not k.startswith("$"))
scalars = st.none() | st.booleans() | numbers | st.text(max_size=8).filter(lambda s: "\x00" not in s)
values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3),
    max_leaves=8,
)
collections = st.sampled_from(["tasks", "metrics", "notes"]) | keys
paths = st.builds(lambda c, rest: ".".join(escape_key(k) for k in [c, *rest]), collections, st.lists(keys, max_size=2))
operations = st.one_of(
    values,
    st.builds(lambda v: {"$set": v}, values),
    st.just({"$unset": True}),
    st.builds(lambda n: {"$inc": n}, numbers),
    st.builds(lambda op, n: {op: n}, st.sampled_from(["$max", "$min"]), numbers),
    st.builds(
        lambda op, v: {op: v}, st.sampled_from(["$add", "$addToSet", "$remove", "$pull"]), st.lists(values, max_size=3)
    ),
    st.builds(lambda v: {"$push": v}, values),
    st.builds(
        lambda each, cap: {"$push": {"$each": each, "$slice": cap}},
        st.lists(values, max_size=3),
        st.none() | st.integers(-3, 3),
    ),
    st.builds(lambda patch: {"$merge": patch}, st.dictionaries(keys, st.none() | values, max_size=3)),
)
deltas = st.dictionaries(paths, operations, min_size=1, max_size=3)
_examples = itertools.count()


async def _checked_reads(http: httpx.AsyncClient, tenant: str, fsa: str, current: int, written: list[str]) -> None:
    base = f"/state/{tenant}/{fsa}"
    reads = [
        base,
        f"{base}?summary=true",
        *(f"{base}?version={v}" for v in range(current + 1)),
        f"{base}/slice?slice=tasks",
        f"{base}/slice?slice=metrics&order=recent&k=2",
        f'{base}/slice?slice=tasks&where=@.status == "OPEN" || @ != null',
        f"{base}/diff?from=0",
        f"{base}/diff?from={max(0, current - 1)}",
        f"{base}/changes?since=0",
        f"{base}/deltas",
        f"/lineage/L-{tenant}?tenant_id={tenant}",
        *(f"{base}/history?{httpx.QueryParams(path=path)}" for path in written[:4]),
    ]
    for url in reads:
        response = await http.get(url)
        assert 200 <= response.status_code < 300, f"{url}: {response.status_code} {response.text[:300]}"
        decoded(response)
    if current == 0:
        return
    for url in (f"{base}/events?since=0", f"/events?tenant={tenant}&since=0"):
        seen: list = []
        async with asyncio.timeout(WAIT_SECONDS):
            await read_sse(http, url, seen, lambda s: current in versions_of(s, fsa))
        assert versions_of(seen, fsa) == list(range(1, current + 1)), url


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(steps=st.lists(deltas, min_size=1, max_size=4))
async def test_any_sequence_of_deltas_leaves_every_read_route_answering_2xx(database_url, live_url, steps):
    """The "Done when" property: deltas from the operator grammar (numbers at the bounds, unicode
    keys, nested values) are each applied or refused with a 4xx — never a 5xx — and afterwards
    every read route of the state and of its tenant (document, summary, time travel, slice,
    history, diff, changes, deltas, lineage, both SSE streams, the Feed) answers 2xx."""
    number = next(_examples)
    tenant, fsa = f"p{number}", "f"
    current = 0
    written: list[str] = []
    async with httpx.AsyncClient(base_url=live_url, timeout=httpx.Timeout(WAIT_SECONDS)) as http:
        for delta in steps:
            response = await http.post(
                f"/state/{tenant}/{fsa}/delta",
                content=jsontext.encode(delta),
                headers={"Content-Type": JSON},
                params={"lineage_id": f"L-{tenant}"},
            )
            assert response.status_code == 200 or 400 <= response.status_code < 500, response.text[:500]
            if response.status_code == 200:
                current = response.json()["version"]
                written += list(delta)
        event(f"{current} of {len(steps)} deltas applied")
        await _checked_reads(http, tenant, fsa, current, written)
    if current:
        async with Feed.connect(database_url) as feed:
            for fsa_id in (fsa, None):
                got: list[int] = []
                async with asyncio.timeout(WAIT_SECONDS):
                    async for change in feed.subscribe(tenant, fsa_id, since=0):
                        got.append(change.version)
                        if change.version == current:
                            break
                assert got == list(range(1, current + 1))
