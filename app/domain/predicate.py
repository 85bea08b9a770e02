"""`where` predicates of slices (SQL/JSON path, run by PostgreSQL on each entry), kept within
bounds before they reach the database: a regular expression that repeats a group which repeats
itself, `(a+)+` or `((.*)){1,100}`, can take exponential time on a long string, holding a
connection until the statement timeout; such patterns are refused outright."""

from __future__ import annotations

import re

from app.errors import invalid_slice

MAX_REGEXES = 3
_LIKE_REGEX = re.compile(r'like_regex\s+"((?:[^"\\]|\\.)*)"')
_BOUNDS = re.compile(r"\{(\d*)(,?)(\d*)\}")


def check_predicate(where: str) -> str:
    """`where` when it holds at most MAX_REGEXES like_regex, none with nested repetition; else a
    400 invalid-slice problem."""
    patterns = _LIKE_REGEX.findall(where)
    if len(patterns) > MAX_REGEXES:
        raise invalid_slice(f"a where predicate may hold at most {MAX_REGEXES} like_regex")
    for pattern in patterns:
        if nested_repetition(pattern):
            raise invalid_slice(
                f"the like_regex pattern {pattern[:60]!r} repeats a group that repeats itself, which can take "
                "exponential time; write it without the nested repetition"
            )
    return where


def nested_repetition(pattern: str) -> bool:
    """Whether the regular expression repeats (*, +, {n,} or {n,m} with m > 1) a group that holds a
    quantifier — a repetition, or an optional part (`(a?){25}` takes exponential time too) — at any
    depth."""
    outer: list[bool] = []  # for each open group, whether the group around it held a quantifier
    holds = False  # whether the group being read holds a quantifier so far
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":
            i = _after_class(pattern, i)
            continue
        if char == "(":
            outer.append(holds)
            holds = False
        elif char == ")" and outer:
            group_holds, holds = holds, outer.pop()
            quantifier, i = _quantifier_at(pattern, i + 1)
            if quantifier == "repeat" and group_holds:
                return True
            holds = holds or group_holds or quantifier is not None
            continue
        elif char not in "*+?{":
            quantifier, after = _quantifier_at(pattern, i + 1)
            if quantifier is not None:
                holds = True
                i = after
                continue
        i += 1
    return False


def _quantifier_at(pattern: str, i: int) -> tuple[str | None, int]:
    """The quantifier that starts at i — "repeat" (more than once), "optional" (at most once) or
    None — and the index after it."""
    if i >= len(pattern):
        return None, i
    lazy = 1 if i + 1 < len(pattern) and pattern[i + 1] == "?" else 0
    if pattern[i] in "*+":
        return "repeat", i + 1 + lazy
    if pattern[i] == "?":
        return "optional", i + 1 + lazy
    bounds = _BOUNDS.match(pattern, i)
    if bounds:
        low, comma, high = bounds.groups()
        least, most = int(low or 0), None if comma and not high else int(high or low or 0)
        if least == most == 1:
            return None, bounds.end()  # exactly once
        return ("repeat" if most is None or most > 1 else "optional"), bounds.end()
    return None, i


def _after_class(pattern: str, i: int) -> int:
    """The index after the bracket expression [...] that starts at i."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1
