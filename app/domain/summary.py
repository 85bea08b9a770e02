"""Summaries: deterministic, compact, LLM-ready text of a slice or a whole state.

A summary is a header (state, version, what matched, what was cut) and a body (counts by status,
then one line per entry with its salient fields). Bodies are cached with their slice in
sms.summary_cache; the header is made per response, since a cached slice stays valid across
versions that did not touch it. Tokens are estimated as characters / 4.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

CHARS_PER_TOKEN = 4
VERSION_SLACK = 8  # a cached body stays within budget while the version in its header grows this many digits
SPEC_LIMIT = 80  # characters of the slice spec quoted in a header
LINE_LIMIT = 160
# Fields that say the most about an entry, first; other short scalars follow.
SALIENT = (
    "status",
    "state",
    "phase",
    "owner",
    "team",
    "assignee",
    "role",
    "priority",
    "severity",
    "last_seen",
    "updated_at",
)


def slice_header(tenant_id: str, fsa_id: str, version: int, spec: str, read: dict[str, Any]) -> str:
    shown = sum(part["returned"] for part in read["parts"])
    cut = f", cut to {shown}" if read["truncated"] else ""
    quoted = spec if len(spec) <= SPEC_LIMIT else spec[: SPEC_LIMIT - 1] + "…"
    return f"State {tenant_id}/{fsa_id} v{version} · slice {quoted}: {read['total']} matched{cut}"


def slice_summary(header: str, body: str, max_tokens: int) -> str:
    """A header and its (cached) body, within the budget even when the header alone is not."""
    budget = max_tokens * CHARS_PER_TOKEN
    if len(header) > budget:
        return header[: budget - 1] + "…"
    return header + "\n" + body if body else header


def slice_body(read: dict[str, Any], header: str, max_tokens: int) -> str:
    """Counts and entry lines of a slice read (sms.read_slice), within what the token budget
    leaves after the header (and room for its version to grow, as the body is cached)."""
    lines: list[str] = []
    seen: set[tuple[str, str]] = set()
    for part in read["parts"]:
        collection = part["collection"]
        if part["whole"] and not part["members"]:
            if part["matched"]:
                lines.append(f"{collection} = {_brief(read['slice'].get(collection))}")
            continue
        counts = part.get("status_counts") or {}
        by_status = ", ".join(f"{status} {n}" for status, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
        head = f"{collection} ({part['spec']}): {part['returned']} of {part['matched']}"
        lines.append(head + (f" · by status: {by_status}" if by_status else ""))
        members = read["slice"].get(collection) or {}
        for member in part["members"]:
            if (collection, member) in seen:
                continue
            seen.add((collection, member))
            value = members.get(member)
            for key in part["path"]:
                value = value.get(key) if isinstance(value, dict) else None
            lines.append(f"- {member}: {_brief(value)}")
    return fit(lines, max_tokens * CHARS_PER_TOKEN - len(header) - 1 - VERSION_SLACK)


def state_summary(tenant_id: str, fsa_id: str, version: int, state: dict[str, Any], max_tokens: int) -> str:
    """The whole state in a budget: each top-level key with its size and status counts, then its
    first entries by key."""
    header = f"State {tenant_id}/{fsa_id} v{version} · {len(state)} top-level keys"
    if len(header) >= max_tokens * CHARS_PER_TOKEN:
        return header[: max_tokens * CHARS_PER_TOKEN - 1] + "…"
    lines: list[str] = []
    for key in sorted(state):
        value = state[key]
        if not isinstance(value, dict):
            lines.append(f"{key} = {_brief(value)}")
            continue
        counts: dict[str, int] = {}
        for member in value.values():
            if isinstance(member, dict) and isinstance(member.get("status"), str):
                counts[member["status"]] = counts.get(member["status"], 0) + 1
        by_status = ", ".join(f"{s} {n}" for s, n in sorted(counts.items(), key=lambda c: (-c[1], c[0])))
        lines.append(f"{key}: {len(value)} entries" + (f" · by status: {by_status}" if by_status else ""))
        lines.extend(f"- {member}: {_brief(value[member])}" for member in sorted(value)[:5])
        if len(value) > 5:
            lines.append(f"- … {len(value) - 5} more")
    return header + "\n" + fit(lines, max_tokens * CHARS_PER_TOKEN - len(header) - 1)


def fit(lines: list[str], budget_chars: int) -> str:
    """As many whole lines as fit in the budget, then a line saying how many were left out (when
    that line fits too)."""
    kept: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        rest = len(lines) - index
        tail = len(f"… {rest} more lines not shown") + 1
        if used + len(line) + 1 > budget_chars - (tail if rest > 1 else 0):
            marker = f"… {rest} more lines not shown"
            if used + len(marker) + 1 <= budget_chars:
                kept.append(marker)
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept)


def _brief(value: Any) -> str:
    """One short line for a value: salient fields of an object, the size of an array."""
    if isinstance(value, dict):
        keys = [k for k in SALIENT if k in value] + sorted(
            k for k in value if k not in SALIENT and _is_short_scalar(value[k])
        )
        text = " ".join(f"{k}={_scalar(value[k])}" for k in keys if _is_short_scalar(value[k]))
        nested = len(value) - sum(1 for k in value if _is_short_scalar(value[k]))
        text = text or "{}"
        if nested:
            text += f" (+{nested} nested)"
    elif isinstance(value, list):
        shown = ", ".join(_scalar(v) for v in value[:5] if _is_short_scalar(v))
        text = f"[{len(value)} items]" + (f" {shown}" if shown else "") + (" …" if len(value) > 5 else "")
    else:
        text = _scalar(value)
    return text if len(text) <= LINE_LIMIT else text[: LINE_LIMIT - 1] + "…"


def _is_short_scalar(value: Any) -> bool:
    return not isinstance(value, dict | list) and (not isinstance(value, str) or len(value) <= 60)


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Decimal | int | float):
        return str(value)
    if isinstance(value, str):
        return value if value and " " not in value and len(value) <= 60 else repr(value[:60])
    return "…"
