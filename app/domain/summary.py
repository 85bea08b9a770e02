"""Summaries: deterministic, compact, LLM-ready text of a slice, a whole state or the changes since a
version, each within a budget of tokens as the configured tokenizer counts them (app.domain.tokens).

A summary is a header (state, version, what matched, what was cut) and a body (counts by status,
then one line per entry with its salient fields). Bodies are cached with their slice in
sms.summary_cache; the header is made per response, since a cached slice stays valid across
versions that did not touch it. Lines are fitted by adding up their counts, and the whole text is
counted once more at the end (a tokenizer may merge across a line break): what would still exceed
the budget is clipped.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.domain.tokens import ESTIMATE, Tokenizer

VERSION_SLACK = 8  # tokens: a cached body stays within budget while its header's version grows 8 digits
SPEC_LIMIT = 80  # characters of the slice spec quoted in a header
LINE_LIMIT = 160
CHANGED_PATHS = "changed paths"  # what a digest's last line says were left out
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


def slice_summary(
    header: str, body: str, max_tokens: int, tokenizer: Tokenizer = ESTIMATE, grown: int | None = None
) -> str:
    """A header and its (cached) body, within the budget even when the header alone is not.
    `grown`: how many digits the header's version has gained since slice_body fitted the body to
    it. Within VERSION_SLACK, a body the estimate fitted needs no second count: the estimate counts
    a digit as one token and text joined by a line break as the sum of its parts."""
    if body and tokenizer is ESTIMATE and grown is not None and 0 <= grown <= VERSION_SLACK:
        return header + "\n" + body
    return tokenizer.clip(header + "\n" + body if body else header, max_tokens)


def slice_body(read: dict[str, Any], header: str, max_tokens: int, tokenizer: Tokenizer = ESTIMATE) -> str:
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
    return fit(lines, max_tokens - tokenizer.count(header) - 1 - VERSION_SLACK, tokenizer)


def state_summary(
    tenant_id: str, fsa_id: str, version: int, state: dict[str, Any], max_tokens: int, tokenizer: Tokenizer = ESTIMATE
) -> str:
    """The whole state in a budget: each top-level key with its size and status counts, then its
    first entries by key."""
    header = f"State {tenant_id}/{fsa_id} v{version} · {len(state)} top-level keys"
    if tokenizer.count(header) >= max_tokens:
        return tokenizer.clip(header, max_tokens)
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
    body = fit(lines, max_tokens - tokenizer.count(header) - 1, tokenizer)
    return tokenizer.clip(header + "\n" + body, max_tokens)


def changes_digest(parts: dict[str, Any], max_tokens: int, tokenizer: Tokenizer = ESTIMATE) -> str:
    """The digest of what changed since a version, from its parts (sms.digest_parts), within the
    budget: all of it when it fits; else the essentials of the header first, who changed it and in
    which lineages where the budget allows, always keeping room to say how many paths were left out,
    then whole lines. The rule of sms.changes_digest, which counts with the estimate: under it, the
    two give the same text."""
    head, lines = parts["head"], parts["lines"]
    whole = head + "".join(parts["clauses"]) + "".join("\n" + line for line in lines)
    if tokenizer.count(whole) <= max_tokens or not lines:
        return tokenizer.clip(whole, max_tokens)
    room = tokenizer.count(_more(len(lines), CHANGED_PATHS)) + 1
    if tokenizer.count(head) + room > max_tokens:
        return tokenizer.clip(head, max_tokens)
    text = head
    for clause in parts["clauses"]:
        if tokenizer.count(text + clause) + room <= max_tokens:
            text += clause
    text += "\n" + fit(lines, max_tokens - tokenizer.count(text) - 1, tokenizer, CHANGED_PATHS)
    return tokenizer.clip(text, max_tokens)


def fit(lines: list[str], budget: int, tokenizer: Tokenizer = ESTIMATE, noun: str = "lines") -> str:
    """All the lines when they fit in the budget (each counted with its line break); else as many as
    fit with a line saying how many were left out (when that line fits too)."""
    costs: list[int] = []  # of the lines up to the first that overflows the budget
    total = 0
    for line in lines:
        costs.append(tokenizer.count(line) + 1)
        total += costs[-1]
        if total > budget:
            break
    else:
        return "\n".join(lines)
    kept: list[str] = []
    used = 0
    for index, cost in enumerate(costs):  # the last cost overflows: the loop stops there at the latest
        line = lines[index]
        rest = len(lines) - index
        marker = _more(rest, noun)
        tail = tokenizer.count(marker) + 1
        if used + cost > budget - (tail if rest > 1 else 0):
            if used + tail <= budget:
                kept.append(marker)
            break
        kept.append(line)
        used += cost
    return "\n".join(kept)


def _more(count: int, noun: str) -> str:
    """The line that says how many lines were left out."""
    return f"… {count} more {noun} not shown"


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
