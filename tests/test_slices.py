"""Slices over HTTP (DESIGN §5, §6, §8): every form of the spec grammar against a realistic seeded
state, k / order / where, invalid requests as problem+json, the original clients' contract, the
summaries' determinism and budgets, and the query plan of a glob (a range scan of
entries_folded_member, never a sequential scan)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest
from helpers import assert_problem, logged_plans, plan_nodes

from app.domain.tokens import estimate

T, F = "acme", "launch"
URL = f"/state/{T}/{F}"
SLICE_FIELDS = {"tenant_id", "fsa_id", "version", "slice", "summary", "slice_pattern", "total", "truncated", "cached"}

TASKS = {
    "DESIGN_001": {"status": "DONE", "team": "design", "owner": "ann", "estimate": 3},
    "DESIGN_002": {"status": "IN_PROGRESS", "team": "design", "estimate": 5},
    "DESIGN_003": {"status": "OPEN", "team": "design", "owner": "bob", "estimate": 8},
    "IMPLEMENT_001": {"status": "OPEN", "team": "backend", "estimate": 13},
    "IMPLEMENT_002": {"status": "DONE", "team": "backend", "estimate": 1},
    "TEST_001": {"status": "OPEN", "team": "qa", "estimate": 2},
}
AGENTS = {
    "DesignBot": {"status": "online", "role": "designer"},
    "MetricsCollector": {"status": "idle"},
    "human": {"status": "online"},
    "reviewbot": {"status": "offline"},
}
# Sent as text so that the decimals keep their exact written form (1.10, 1000.10).
SEED_TEXT = (
    '{"tasks": '
    + json.dumps(TASKS)
    + ', "metrics": {"ctr": 1.10, "latency_ms": 120, "cost_per_day": 0.30},'
    + ' "resources": {"cash_balance_usd": 1000.10, "inventory": ["gpu-1", "gpu-2", "tpu-1"]},'
    + ' "agents_online": '
    + json.dumps(AGENTS)
    + ', "flags": {"A_B": 1, "AxB": 2, "a_bc": 3, "100%": 4, "100x": 5},'
    + ' "phase": "build"}'
)
SEED = json.loads(SEED_TEXT, parse_float=Decimal)


def exact(text: str) -> Any:
    return json.loads(text, parse_float=Decimal)


async def seed(client, url: str = URL, text: str = SEED_TEXT) -> int:
    response = await client.post(url, content=text, headers={"Content-Type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()["version"]


async def write(client, delta: dict[str, Any], url: str = URL) -> int:
    response = await client.post(f"{url}/delta", json=delta)
    assert response.status_code == 200, response.text
    return response.json()["version"]


async def get_slice(client, *specs: str, url: str = URL, **params: Any) -> dict[str, Any]:
    response = await client.get(f"{url}/slice", params={"slice": list(specs), **params})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].split(";")[0] == "application/json"
    body = exact(response.text)
    assert set(body) == SLICE_FIELDS
    return body


def entry_lines(summary: str) -> list[str]:
    """The members named by the summary's entry lines ("- member: ..."), in order."""
    return [line[2:].split(":", 1)[0] for line in summary.splitlines() if line.startswith("- ")]


@pytest.fixture
async def seeded(client):
    await seed(client)
    return client


# ---------------------------------------------------------------- the grammar


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("task:DESIGN_*", {"tasks": {k: v for k, v in TASKS.items() if k.startswith("DESIGN_")}}),
        ("task:*", {"tasks": TASKS}),
        ("tasks:*", {"tasks": TASKS}),
        ("metric:*", {"metrics": SEED["metrics"]}),
        ("metric:c*", {"metrics": {"ctr": Decimal("1.10"), "cost_per_day": Decimal("0.30")}}),
        ("resource:*", {"resources": SEED["resources"]}),
        ("agent:*", {"agents_online": AGENTS}),
        ("agents_online:*", {"agents_online": AGENTS}),
        ("agent:*bot", {"agents_online": {"DesignBot": AGENTS["DesignBot"], "reviewbot": AGENTS["reviewbot"]}}),
        ("agent:DESIGN*", {"agents_online": {"DesignBot": AGENTS["DesignBot"]}}),
        ("task:design_*", {"tasks": {k: v for k, v in TASKS.items() if k.startswith("DESIGN_")}}),
        ("Task:Test_*", {"tasks": {"TEST_001": TASKS["TEST_001"]}}),
        ("agent:human", {"agents_online": {"human": AGENTS["human"]}}),
        ("task:design_00?", {"tasks": {k: v for k, v in TASKS.items() if k.startswith("DESIGN_")}}),
        ("task:?EST_001", {"tasks": {"TEST_001": TASKS["TEST_001"]}}),
        ("task:design_0?", {}),
        ("task:*_002", {"tasks": {"DESIGN_002": TASKS["DESIGN_002"], "IMPLEMENT_002": TASKS["IMPLEMENT_002"]}}),
        ("resources.inventory", {"resources": {"inventory": ["gpu-1", "gpu-2", "tpu-1"]}}),
        ("resources.cash_balance_usd", {"resources": {"cash_balance_usd": Decimal("1000.10")}}),
        ("resources.*", {"resources": SEED["resources"]}),
        ("resources", {"resources": SEED["resources"]}),
        ("phase", {"phase": "build"}),
        ("tasks.DESIGN_001.status", {"tasks": {"DESIGN_001": {"status": "DONE"}}}),
        ("tasks.*.status", {"tasks": {k: {"status": v["status"]} for k, v in TASKS.items()}}),
        ("tasks.*.owner", {"tasks": {"DESIGN_001": {"owner": "ann"}, "DESIGN_003": {"owner": "bob"}}}),
        ("tasks.DESIGN_*.team", {"tasks": {k: {"team": "design"} for k in TASKS if k.startswith("DESIGN_")}}),
        ("tasks.NOPE", {}),
        ("nothing", {}),
        ("nothing:*", {}),
        # glob characters of LIKE in keys are literal
        ("flags:a_b*", {"flags": {"A_B": 1, "a_bc": 3}}),
        ("flags:A_B", {"flags": {"A_B": 1}}),
        ("flags:100%", {"flags": {"100%": 4}}),
        ("flags:100%*", {"flags": {"100%": 4}}),
        ("flags:100?", {"flags": {"100%": 4, "100x": 5}}),
        ("flags:a?b", {"flags": {"A_B": 1, "AxB": 2}}),
        ("flags.A_B", {"flags": {"A_B": 1}}),
    ],
)
async def test_every_form_of_the_grammar(seeded, spec, expected):
    body = await get_slice(seeded, spec)
    assert body["slice"] == expected, spec
    assert (body["tenant_id"], body["fsa_id"], body["version"], body["slice_pattern"]) == (T, F, 1, spec)
    assert body["truncated"] is False
    members = sum(len(v) if isinstance(v, dict) else 1 for v in expected.values())
    assert body["total"] == members
    assert set(entry_lines(body["summary"])) == {
        member for value in expected.values() if isinstance(value, dict) for member in value
    }


async def test_an_alias_pattern_without_wildcards_matches_case_insensitively_too(seeded):
    """`alias:pattern` is a glob (DESIGN §5) and globs fold case: a pattern with no `*`/`?` must
    match the same keys as the same pattern does with a wildcard that matches one character."""
    assert (await get_slice(seeded, "agent:HUMA?"))["slice"] == {"agents_online": {"human": AGENTS["human"]}}
    assert (await get_slice(seeded, "agent:HUMAN"))["slice"] == {"agents_online": {"human": AGENTS["human"]}}
    assert (await get_slice(seeded, "flags:a_b"))["slice"] == {"flags": {"A_B": 1}}
    assert (await get_slice(seeded, "task:design_001"))["slice"] == {"tasks": {"DESIGN_001": TASKS["DESIGN_001"]}}


async def test_unions_comma_separated_and_repeated_params_give_the_same_slice(seeded):
    expected = {
        "tasks": {k: v for k, v in TASKS.items() if k.startswith("DESIGN_")},
        "agents_online": {"DesignBot": AGENTS["DesignBot"], "reviewbot": AGENTS["reviewbot"]},
        "resources": {"cash_balance_usd": Decimal("1000.10")},
        "phase": "build",
    }
    comma = await get_slice(seeded, "task:DESIGN_*,agent:*bot,resources.cash_balance_usd,phase", max_tokens=1000)
    repeated = await get_slice(
        seeded, "task:DESIGN_*", "agent:*bot", "resources.cash_balance_usd", "phase", max_tokens=1000
    )
    mixed = await get_slice(seeded, "task:DESIGN_*, agent:*bot", "resources.cash_balance_usd", "phase", max_tokens=1000)
    for body in (comma, repeated, mixed):
        assert body["slice"] == expected
        assert body["total"] == 3 + 2 + 1 + 1
        assert body["truncated"] is False
        assert sorted(entry_lines(body["summary"])) == sorted(
            ["DESIGN_001", "DESIGN_002", "DESIGN_003", "DesignBot", "reviewbot", "cash_balance_usd"]
        )
    assert repeated["slice_pattern"] == comma["slice_pattern"]


async def test_overlapping_specs_do_not_duplicate(seeded):
    body = await get_slice(
        seeded, "task:DESIGN_*", "tasks.DESIGN_001", "task:design_00?", "tasks.*.status", max_tokens=1000
    )
    assert body["slice"] == {
        "tasks": {
            **{k: {"status": v["status"]} for k, v in TASKS.items()},
            **{k: v for k, v in TASKS.items() if k.startswith("DESIGN_")},
        }
    }
    lines = entry_lines(body["summary"])
    assert len(lines) == len(set(lines)) == len(TASKS), body["summary"]
    # the same two specs merged into a bigger one give the bigger one
    whole = await get_slice(seeded, "tasks.*.status", "task:*")
    assert whole["slice"] == {"tasks": TASKS}


async def test_k_limits_each_spec_and_reports_total_and_truncated(seeded):
    body = await get_slice(seeded, "task:*", k=2)
    assert body["slice"] == {"tasks": {"DESIGN_001": TASKS["DESIGN_001"], "DESIGN_002": TASKS["DESIGN_002"]}}
    assert (body["total"], body["truncated"]) == (6, True)
    assert entry_lines(body["summary"]) == ["DESIGN_001", "DESIGN_002"]
    assert "6 matched, cut to 2" in body["summary"].splitlines()[0]

    per_spec = await get_slice(seeded, "task:DESIGN_*", "task:IMPLEMENT_*", "agent:*", k=1)
    assert per_spec["slice"] == {
        "tasks": {"DESIGN_001": TASKS["DESIGN_001"], "IMPLEMENT_001": TASKS["IMPLEMENT_001"]},
        "agents_online": {"DesignBot": AGENTS["DesignBot"]},
    }
    assert (per_spec["total"], per_spec["truncated"]) == (3 + 2 + 4, True)

    exact_fit = await get_slice(seeded, "task:DESIGN_*", k=3)
    assert (exact_fit["total"], exact_fit["truncated"], len(exact_fit["slice"]["tasks"])) == (3, False, 3)
    many = await get_slice(seeded, "task:DESIGN_*", k=1000)
    assert (many["total"], many["truncated"], len(many["slice"]["tasks"])) == (3, False, 3)


async def test_order_recent_puts_the_latest_changes_first(seeded):
    await write(seeded, {"tasks.IMPLEMENT_002.status": "OPEN"})
    await write(seeded, {"tasks.DESIGN_003.status": "DONE"})
    await write(seeded, {"metrics.ctr": 2})  # another collection: no effect on the order of tasks

    recent = await get_slice(seeded, "task:*", order="recent")
    assert entry_lines(recent["summary"]) == [
        "DESIGN_003",
        "IMPLEMENT_002",
        "DESIGN_001",
        "DESIGN_002",
        "IMPLEMENT_001",
        "TEST_001",
    ]
    by_key = await get_slice(seeded, "task:*", order="key")
    assert entry_lines(by_key["summary"]) == sorted(TASKS)
    default = await get_slice(seeded, "task:*")
    assert entry_lines(default["summary"]) == sorted(TASKS)

    top2 = await get_slice(seeded, "task:*", order="recent", k=2)
    assert set(top2["slice"]["tasks"]) == {"DESIGN_003", "IMPLEMENT_002"}
    assert top2["slice"]["tasks"]["DESIGN_003"]["status"] == "DONE"
    assert (top2["total"], top2["truncated"], top2["version"]) == (6, True, 4)
    first2 = await get_slice(seeded, "task:*", order="key", k=2)
    assert set(first2["slice"]["tasks"]) == {"DESIGN_001", "DESIGN_002"}


@pytest.mark.parametrize(
    ("where", "members"),
    [
        ('@.status == "OPEN"', {"DESIGN_003", "IMPLEMENT_001", "TEST_001"}),
        ('@.status == "open"', set()),
        ("@.estimate > 4", {"DESIGN_002", "DESIGN_003", "IMPLEMENT_001"}),
        ('@.estimate <= 3 && @.team == "design"', {"DESIGN_001"}),
        ("exists(@.owner)", {"DESIGN_001", "DESIGN_003"}),
        ('@.status == "DONE" || @.team == "qa"', {"DESIGN_001", "IMPLEMENT_002", "TEST_001"}),
        ('@.team starts with "back"', {"IMPLEMENT_001", "IMPLEMENT_002"}),
    ],
)
async def test_where_filters_each_entry_with_a_jsonpath_predicate(seeded, where, members):
    body = await get_slice(seeded, "task:*", where=where)
    assert body["slice"] == ({"tasks": {m: TASKS[m] for m in members}} if members else {})
    assert (body["total"], body["truncated"]) == (len(members), False)
    assert set(entry_lines(body["summary"])) == members


async def test_where_with_k_and_a_dotted_path(seeded):
    body = await get_slice(seeded, "tasks.*.status", where='@.status == "OPEN"', k=2)
    assert body["slice"] == {"tasks": {"DESIGN_003": {"status": "OPEN"}, "IMPLEMENT_001": {"status": "OPEN"}}}
    assert (body["total"], body["truncated"]) == (3, True)
    scalar = await get_slice(seeded, "phase", where='@ == "build"')
    assert (scalar["slice"], scalar["total"]) == ({"phase": "build"}, 1)
    missed = await get_slice(seeded, "phase", where='@ == "ship"')
    assert (missed["slice"], missed["total"]) == ({}, 0)


async def test_a_state_never_written_has_an_empty_slice_at_version_0(client, conn):
    body = await get_slice(
        client, "task:DESIGN_*", "resources.cash_balance_usd", "phase", url="/state/nobody/none", k=5
    )
    assert (body["tenant_id"], body["fsa_id"], body["version"]) == ("nobody", "none", 0)
    assert (body["slice"], body["total"], body["truncated"]) == ({}, 0, False)
    assert body["summary"].startswith("State nobody/none v0")
    assert await conn.fetchval("SELECT count(*) FROM sms.states") == 0


async def test_exact_decimals_keep_their_written_form(seeded):
    response = await seeded.get(f"{URL}/slice", params={"slice": ["metric:*", "resources.cash_balance_usd"]})
    assert response.status_code == 200
    assert '"ctr":1.10' in response.text
    assert '"cost_per_day":0.30' in response.text
    assert '"cash_balance_usd":1000.10' in response.text
    assert "1.10" in response.json()["summary"]


async def test_the_response_has_exactly_the_documented_fields(seeded):
    response = await seeded.get(f"{URL}/slice", params={"slice": "task:DESIGN_*", "k": 5})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == SLICE_FIELDS
    assert isinstance(body["version"], int) and isinstance(body["total"], int)
    assert isinstance(body["truncated"], bool) and isinstance(body["cached"], bool)
    assert isinstance(body["summary"], str) and isinstance(body["slice"], dict)
    assert response.headers["etag"] == '"1"'


# ---------------------------------------------------------------- invalid requests


@pytest.mark.parametrize(
    ("params", "slug"),
    [
        ({"slice": ""}, "invalid-slice"),
        ({"slice": "   "}, "invalid-slice"),
        ({"slice": "task:a,,task:b"}, "invalid-slice"),
        ({"slice": "task:a,"}, "invalid-slice"),
        ({"slice": "a..b"}, "invalid-slice"),
        ({"slice": ".tasks"}, "invalid-slice"),
        ({"slice": "tasks."}, "invalid-slice"),
        ({"slice": "*.x"}, "invalid-slice"),
        ({"slice": "task*"}, "invalid-slice"),
        ({"slice": "tas?.x"}, "invalid-slice"),
        ({"slice": "tasks.x.*"}, "invalid-slice"),
        ({"slice": "tasks.*.st?tus"}, "invalid-slice"),
        ({"slice": "task:"}, "invalid-slice"),
        ({"slice": "task:DESIGN_*,agent:"}, "invalid-slice"),
        ({"slice": ",".join(f"task:T{i}" for i in range(21))}, "invalid-slice"),
        ({"slice": "task:" + "x" * 2001}, "invalid-slice"),
        ({"slice": "task:*", "where": "@.status =="}, "invalid-predicate"),
        ({"slice": "task:*", "where": "@.status == OPEN"}, "invalid-predicate"),
        ({"slice": "task:*", "where": '@.a like_regex "("'}, "invalid-predicate"),
        ({"slice": "task:*", "k": 0}, "malformed-request"),
        ({"slice": "task:*", "k": -1}, "malformed-request"),
        ({"slice": "task:*", "k": "five"}, "malformed-request"),
        ({"slice": "task:*", "order": "foo"}, "malformed-request"),
        ({"slice": "task:*", "max_tokens": 0}, "malformed-request"),
        ({}, "malformed-request"),
    ],
)
async def test_invalid_specs_and_parameters_are_400_problems(seeded, conn, params, slug):
    response = await seeded.get(f"{URL}/slice", params=params)
    body = assert_problem(response, 400, slug)
    assert body["detail"]
    assert await conn.fetchval("SELECT count(*) FROM sms.summary_cache") == 0


# ---------------------------------------------------------------- the original clients' contract


async def test_the_original_clients_slice_call(seeded):
    response = await seeded.get(f"{URL}/slice?slice=task:DESIGN_*&k=5")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["version"] == 1
    assert body["slice"]["tasks"] == {k: v for k, v in TASKS.items() if k.startswith("DESIGN_")}
    assert set(body["slice"]) == {"tasks"}
    summary = body["summary"]
    assert isinstance(summary, str) and summary.strip()
    assert "v1" in summary.splitlines()[0]
    for task in ("DESIGN_001", "DESIGN_002", "DESIGN_003"):
        assert task in summary
    assert "IMPLEMENT_001" not in summary and "TEST_001" not in summary


# ---------------------------------------------------------------- summaries


async def test_summaries_are_deterministic(seeded, conn):
    params = {"slice": ["task:*", "agent:*bot", "resources.*", "phase"], "k": 4, "order": "recent"}
    first = await get_slice(seeded, *params["slice"], k=4, order="recent")
    await conn.execute("DELETE FROM sms.summary_cache")
    again = await get_slice(seeded, *params["slice"], k=4, order="recent")
    assert (first["cached"], again["cached"]) == (False, False)
    assert again["summary"] == first["summary"]

    # the same content in another state: the same text but for the state's name in the header
    await seed(seeded, url=f"/state/{T}/other")
    other = await get_slice(seeded, *params["slice"], k=4, order="recent", url=f"/state/{T}/other")
    assert other["summary"] == first["summary"].replace(f"{T}/{F}", f"{T}/other", 1)

    whole = [(await seeded.get(URL, params={"summary": "true", "max_tokens": 200})).json()["summary"] for _ in range(2)]
    assert whole[0] == whole[1]


async def test_the_summary_counts_by_status_and_has_one_line_per_entry(seeded):
    body = await get_slice(seeded, "task:*")
    lines = body["summary"].splitlines()
    assert lines[0] == f"State {T}/{F} v1 · slice task:*: 6 matched"
    assert "by status: OPEN 3, DONE 2, IN_PROGRESS 1" in body["summary"]
    entries = [line for line in lines if line.startswith("- ")]
    assert [line.split(":")[0][2:] for line in entries] == sorted(TASKS)
    for line in entries:
        member = line[2:].split(":")[0]
        assert f"status={TASKS[member]['status']}" in line
        assert f"team={TASKS[member]['team']}" in line
        assert line.index("status=") < line.index("team=")  # the most salient field first
    assert "owner=ann" in next(line for line in entries if line.startswith("- DESIGN_001:"))

    cut = await get_slice(seeded, "task:*", k=2)
    # counts are over every match, not only the lines shown
    assert "by status: OPEN 3, DONE 2, IN_PROGRESS 1" in cut["summary"]
    assert "2 of 6" in cut["summary"]


async def test_whole_state_summary(seeded):
    response = await seeded.get(URL, params={"summary": "true", "max_tokens": 1000})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"tenant_id", "fsa_id", "version", "summary"}
    assert (body["tenant_id"], body["fsa_id"], body["version"]) == (T, F, 1)
    summary = body["summary"]
    assert summary.startswith(f"State {T}/{F} v1 · 6 top-level keys")
    assert "tasks: 6 entries · by status: OPEN 3, DONE 2, IN_PROGRESS 1" in summary
    assert "phase = build" in summary
    assert "- DESIGN_001: status=DONE" in summary

    await write(seeded, {"tasks.TEST_001.status": "DONE"})
    newer = (await seeded.get(URL, params={"summary": "true", "max_tokens": 1000})).json()
    assert newer["version"] == 2 and newer["summary"].startswith(f"State {T}/{F} v2")
    assert "by status: DONE 3, OPEN 2, IN_PROGRESS 1" in newer["summary"]


BUDGETS = (20, 30, 50, 80, 120, 300, 1000)
BIG_TASKS = {f"T{i:04d}": {"status": ["OPEN", "DONE"][i % 2], "team": "t" * (i % 30), "n": i} for i in range(300)}


async def test_whole_state_summary_stays_within_its_budget(seeded):
    await write(seeded, {"tasks": {"$merge": BIG_TASKS}})
    sizes = {}
    for max_tokens in BUDGETS:
        response = await seeded.get(URL, params={"summary": "true", "max_tokens": max_tokens})
        assert response.status_code == 200
        summary = response.json()["summary"]
        assert summary.startswith(f"State {T}/{F} v2")
        sizes[max_tokens] = len(summary)
    assert {n: size for n, size in sizes.items() if size / 4 > n} == {}, sizes
    assert sizes[1000] > sizes[30]


@pytest.mark.parametrize(
    ("specs", "k"),
    [
        (["task:*"], None),
        (["task:DESIGN_*"], 2),
        (["task:*", "agent:*", "resources.*", "metric:*", "phase"], None),
        (["tasks.*.status"], 5),
    ],
)
async def test_slice_summary_stays_within_max_tokens(seeded, specs, k):
    """The summary's estimated tokens <= max_tokens for every budget the API accepts, down to its minimum (20)."""
    await write(seeded, {"tasks": {"$merge": BIG_TASKS}})
    over = {}
    for max_tokens in BUDGETS:
        params = {"max_tokens": max_tokens} | ({"k": k} if k else {})
        body = await get_slice(seeded, *specs, **params)
        summary = body["summary"]
        assert summary.startswith(f"State {T}/{F} v2")
        if estimate(summary) > max_tokens:
            over[max_tokens] = summary
        again = await get_slice(seeded, *specs, **params)
        assert again["cached"] is True and again["summary"] == summary
    assert over == {}, over


async def test_a_long_union_spec_keeps_the_summary_within_max_tokens(seeded):
    """The header names the spec; a spec of 20 parts must still fit the budget."""
    members = {f"TASK_WITH_A_RATHER_LONG_DESCRIPTIVE_IDENTIFIER_{i:03d}": {"status": "OPEN"} for i in range(20)}
    await write(seeded, {"tasks": {"$merge": members}})
    specs = [f"tasks.{member}.status" for member in members]
    body = await get_slice(seeded, *specs, max_tokens=300)
    assert body["total"] == 20
    assert len(body["summary"]) / 4 <= 300, len(body["summary"])


# ---------------------------------------------------------------- the plan of a glob


@pytest.fixture
async def big_state(conn):
    document = {
        "tasks": {
            f"{kind}_{i:04d}": {"status": ["OPEN", "DONE", "IN_PROGRESS"][i % 3], "team": kind.lower()}
            for kind in ("DESIGN", "IMPLEMENT", "TEST", "REVIEW")
            for i in range(600)
        },
        "metrics": {f"m{i:04d}": i for i in range(800)},
        "agents_online": {f"Agent{i:03d}Bot": {"status": "online"} for i in range(400)},
        "resources": {"cash_balance_usd": 10, "inventory": list(range(50))},
    }
    await conn.fetchval("SELECT sms.replace_state('t', 'f', $1::jsonb)::text", json.dumps(document))
    await conn.execute("ANALYZE sms.entries")
    return document


async def explain(conn, spec: str) -> list[dict[str, Any]]:
    """The plan of the scan that sms.slice_entries (PL/pgSQL) runs for `spec`."""
    plans = await logged_plans(
        conn, f"SELECT * FROM sms.slice_entries($1, $2, (sms.parse_slice('{spec}')) -> 0)", "t", "f"
    )
    return [node for plan in plans if "sms.entries" in plan["Query Text"] for node in plan_nodes(plan["Plan"])]


async def test_a_glob_is_a_range_scan_of_the_folded_member_index(conn, big_state):
    nodes = await explain(conn, "task:DESIGN_*")
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    scans = [n for n in nodes if n.get("Index Name") == "entries_folded_member"]
    assert scans, nodes
    cond = scans[0]["Index Cond"]
    assert "lower(member)" in cond and ">=" in cond and "<" in cond, cond
    assert "design_" in cond and "collection" in cond, cond
    count = await conn.fetchval(
        "SELECT count(*) FROM sms.slice_entries('t', 'f', (sms.parse_slice('task:DESIGN_*')) -> 0)"
    )
    assert count == 600


async def test_a_match_all_glob_still_restricts_to_its_collection(conn, big_state):
    nodes = await explain(conn, "task:*")
    assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
    scans = [n for n in nodes if n.get("Index Name") == "entries_folded_member"]
    assert scans, nodes
    assert "collection" in scans[0]["Index Cond"] and "tasks" in scans[0]["Index Cond"], scans[0]["Index Cond"]
    count = await conn.fetchval("SELECT count(*) FROM sms.slice_entries('t', 'f', (sms.parse_slice('task:*')) -> 0)")
    assert count == 2400


READ_PARTS = "SELECT sms.read_slice_parts('t', 'f', sms.parse_slice($1), $2, coalesce($3, 'key'), NULL)::text"
ENTRY_SCANS = {"Index Scan", "Index Only Scan", "Bitmap Heap Scan", "Seq Scan"}


async def entries_read(conn, spec: str, k: int, order: str = "key") -> int:
    """Rows of sms.entries that an uncached slice read looked at (EXPLAIN ANALYZE of every
    statement it ran), filtered out ones included."""
    plans = await logged_plans(conn, READ_PARTS, spec, k, order, analyze=True)
    return sum(
        (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"]
        for plan in plans
        for node in plan_nodes(plan["Plan"])
        if node["Node Type"] in ENTRY_SCANS and node.get("Relation Name") == "entries"
    )


@pytest.mark.parametrize("spec", ["task:*", "tasks", "task:DESIGN_*", "task:review_*", "agent:*"])
async def test_a_whole_collection_or_key_family_reads_only_its_first_k_entries(conn, big_state, spec):
    """Its total and status counts come from sms.member_counts and its first k by key straight
    from the index: 3 members read (and the collection's own row), of hundreds matched."""
    assert await entries_read(conn, spec, 3) <= 3 + 1
    read = json.loads(await conn.fetchval(READ_PARTS, spec, 3, None))
    collection = "agents_online" if spec.startswith("agent") else "tasks"
    prefix = spec.partition(":")[2].rstrip("*").lower() if ":" in spec else ""
    matched = sorted((k for k in big_state[collection] if k.lower().startswith(prefix)), key=lambda k: k.lower())
    assert read["total"] == len(matched) and read["truncated"]
    assert read["parts"][0]["members"] == matched[:3]
    statuses: dict[str, int] = {}
    for key in matched:
        status = big_state[collection][key]["status"]
        statuses[status] = statuses.get(status, 0) + 1
    assert read["parts"][0]["status_counts"] == statuses


async def test_the_most_recently_changed_are_found_in_the_history_not_by_sorting_every_match(conn, big_state):
    """order=recent walks the collection's history newest first: after ten single changes, the
    three newest tasks cost a few entry reads, not a sort of 600 (or 2400) matches."""
    for i in (5, 17, 250, 3, 42, 7, 99, 1, 2, 4):
        delta = json.dumps({f"tasks.DESIGN_{i:04d}.n": i})
        await conn.fetchval("SELECT sms.apply_delta('t', 'f', $1::jsonb)::text", delta)
    for spec in ("task:*", "task:DESIGN_*"):
        # a lookup per find, the three returned, the collection's own row
        assert await entries_read(conn, spec, 3, "recent") <= 3 + 3 + 1
        read = json.loads(await conn.fetchval(READ_PARTS, spec, 3, "recent"))
        assert read["parts"][0]["members"] == ["DESIGN_0004", "DESIGN_0002", "DESIGN_0001"]


@pytest.mark.parametrize("spec, candidates", [("task:DES*", 600), ("task:*_0001", 2400), ("tasks.*.status", 2400)])
async def test_any_other_glob_is_counted_over_the_entries_it_covers(conn, big_state, spec, candidates):
    """What the counts can't answer is counted: the cost of these grows with their candidates."""
    assert await entries_read(conn, spec, 3) >= candidates


async def test_an_expensive_where_predicate_is_cut_off_by_the_statement_timeout(client, make_client):
    big = {"samples": list(range(200_000))}  # within SMS_MAX_VALUES (250,000)
    assert (await client.post("/state/t/timeouts", json=big)).status_code == 200
    # the where read's own statement timeout: the service's other statements keep theirs (at 5 ms
    # for all of them, a slow machine's start-up check overran it)
    async with make_client(where_timeout_ms=5) as short:
        response = await short.get(
            "/state/t/timeouts/slice",
            params={"slice": "samples", "where": 'exists(@[*] ? (@ == -1 || @ like_regex "^x"))'},
        )
    assert response.status_code == 503, response.text
    assert response.json()["type"] == "urn:sms:problem:statement-timeout"
