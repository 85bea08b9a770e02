"""What each part of the benchmark suite hands to the report (`python -m bench all`), and the report
itself: report.md (the machine, every check, each section's tables and charts), a PNG per chart and
results.json.

matplotlib and tqdm (the `bench` extra) are imported where they are used, so that the single
benchmarks (`python -m bench merge`, …) run without them."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Check:
    """One 'done when' ratio of a run: its value, the bound it must meet, and whether it did."""

    name: str  # e.g. "group commit / one transaction per delta, 64 writers"
    value: float  # the measured ratio (or milliseconds, for a latency bound: say so in `unit`)
    bound: str  # e.g. "≥ 5×", "< 50 ms"
    passed: bool
    unit: str = "×"


@dataclass(frozen=True)
class Chart:
    """A PNG chart: `draw(axes)` draws it on a matplotlib Axes; saved as <name>.png."""

    name: str
    title: str
    draw: Callable[[Any], None]


@dataclass
class Section:
    """One part of the report: a title, markdown (tables and a few sentences), its checks, its
    charts and its raw numbers (written to results.json)."""

    title: str
    markdown: str
    checks: list[Check] = field(default_factory=list)
    charts: list[Chart] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)


def format_value(check: Check) -> str:
    """A check's value as the report shows it: a fraction in per cent, a ratio with ×, else the
    number and its unit."""
    if check.unit == "%":
        return f"{check.value * 100:.1f} %"
    if check.unit == "×":
        return f"{check.value:,.2f}×"
    return f"{check.value:,.4g}" + (f" {check.unit}" if check.unit else "")


def finish(checks: list[Check], machine: dict[str, str], data: dict[str, Any], json_path: Path | None) -> int:
    """The end of a benchmark run alone: each check on a line, the numbers to `json_path` if given,
    and the exit status (1 when a check failed)."""
    for check in checks:
        verdict = "PASS" if check.passed else "FAIL"
        print(f"check: {check.name}: {format_value(check)} (bound {check.bound}): {verdict}")
    if json_path:
        results = {"machine": machine, **data, "checks": [asdict(check) for check in checks]}
        json_path.write_text(json.dumps(results, indent=2))
    return 0 if all(check.passed for check in checks) else 1


def markdown_table(headers: list[str], rows: list[list[str]], left_columns: int = 1) -> str:
    """A GitHub-flavoured markdown table: the first `left_columns` (names) left-aligned, the others
    (numbers) right-aligned, like bench.common.format_table: one list of rows serves the terminal
    and the report."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"

    rule = "|" + "|".join(":---" if index < left_columns else "---:" for index in range(len(headers))) + "|"
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def progress(total: int, description: str) -> Any:
    """A tqdm bar of `total` steps (a context manager with .update(n=1)). It draws nothing when
    stderr is no terminal or CI is set, where a redrawn bar only litters the log; one line then
    says what started instead."""
    from tqdm import tqdm

    quiet = bool(os.environ.get("CI")) or not sys.stderr.isatty()
    if quiet:
        print(f"{description}: {total} steps", file=sys.stderr, flush=True)
    return tqdm(total=total, desc=description, disable=quiet, leave=False, dynamic_ncols=True)


def write_report(folder: Path, machine: dict[str, str], sections: list[Section]) -> Path:
    """Writes folder/results.json (every section's data and checks), a PNG per chart and
    folder/report.md (the machine, every check with PASS/FAIL, then each section with its charts);
    returns the path of report.md. The JSON comes first so that the numbers survive a chart that
    fails to draw."""
    names = [chart.name for section in sections for chart in section.charts]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"two charts would write the same file: {', '.join(duplicates)}")
    folder.mkdir(parents=True, exist_ok=True)
    written = datetime.now(UTC)
    results = {
        "date": written.isoformat(timespec="seconds"),
        "machine": machine,
        "sections": [
            {"title": section.title, "checks": [asdict(check) for check in section.checks], "data": section.data}
            for section in sections
        ],
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    for section in sections:
        for chart in section.charts:
            _save_chart(chart, folder / f"{chart.name}.png")
    path = folder / "report.md"
    path.write_text(_report_markdown(written, machine, sections))
    return path


README_BEGIN = "<!-- bench all: begin (written by python -m bench all --readme; edits here are replaced) -->"
README_END = "<!-- bench all: end -->"
README_CHART = "throughput_writers"  # the chart the README shows (hot-state deltas/s), copied to docs/bench/
README_CHART_FOLDER = Path("docs") / "bench"


def update_readme(readme: Path, folder: Path, machine: dict[str, str], sections: list[Section]) -> None:
    """Replaces the README's part between README_BEGIN and README_END with this run's checks and
    its README_CHART (copied next to the README as docs/bench/<chart>.png, from the report in `folder`)."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise ValueError(f"{readme} has no part marked {README_BEGIN!r} … {README_END!r}")
    parts = [
        README_BEGIN,
        f"Last run: {datetime.now(UTC):%Y-%m-%d}, {machine.get('CPU', '?')} ({machine.get('cores', '?')}), "
        f"{machine.get('PostgreSQL', '?').split(' on ')[0]}, commit {machine.get('commit', '?')}.",
        _checks_table(sections),
    ]
    charts = {chart.name: chart for section in sections for chart in section.charts}
    if README_CHART in charts and (folder / f"{README_CHART}.png").is_file():
        target = readme.parent / README_CHART_FOLDER / f"{README_CHART}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / f"{README_CHART}.png", target)
        parts.append(f"![{charts[README_CHART].title}]({(README_CHART_FOLDER / target.name).as_posix()})")
    parts.append(README_END)
    before, rest = text.split(README_BEGIN, 1)
    after = rest.split(README_END, 1)[1]
    readme.write_text(before + "\n\n".join(parts) + after)


def _checks_table(sections: list[Section]) -> str:
    checks = [
        [section.title, _plain(check.name), format_value(check), check.bound, "PASS" if check.passed else "**FAIL**"]
        for section in sections
        for check in section.checks
    ]
    if not checks:
        return "No checks were run."
    return markdown_table(["section", "check", "value", "bound", "result"], checks, left_columns=2)


def _report_markdown(written: datetime, machine: dict[str, str], sections: list[Section]) -> str:
    parts = [
        "# State Memory Service — benchmark report",
        f"Run on {written:%Y-%m-%d %H:%M} UTC.",
        "## Machine",
        markdown_table(["", ""], [[key, value] for key, value in machine.items()], left_columns=2),
        "## Checks",
        _checks_table(sections),
    ]
    for section in sections:
        parts += [f"## {section.title}", section.markdown.strip()]
        parts += [f"![{chart.title}]({chart.name}.png)" for chart in section.charts]
    return "\n\n".join(parts) + "\n"


def _plain(text: str) -> str:
    """Check names are plain text: their * and _ (slice globs, paths) must not turn into emphasis."""
    return text.replace("*", "\\*").replace("_", "\\_")


def _save_chart(chart: Chart, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server, and no GUI toolkit needed
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7.5, 4.5))
    try:
        chart.draw(axes)
        axes.set_title(chart.title)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        pyplot.close(figure)
