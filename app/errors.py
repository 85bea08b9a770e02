"""Errors: one table maps SQLSTATE codes to HTTP problem types (RFC 9457).

SQL raises its own SQLSTATE codes (class SM) with a message naming the path and a JSON DETAIL;
Python raises `Problem` directly for what it checks before the database.
"""

from __future__ import annotations

from typing import Any

from state_memory_client import jsontext

PROBLEM_BASE = "urn:sms:problem:"

# SQLSTATE (or its two-character class) -> (HTTP status, problem slug, title)
SQLSTATE_PROBLEMS: dict[str, tuple[int, str, str]] = {
    "SM001": (422, "invalid-delta", "The delta is invalid"),
    "SM002": (422, "type-mismatch", "An operator met a value of the wrong type"),
    "SM003": (409, "version-conflict", "The state is not at the expected version"),
    "SM004": (409, "expectation-failed", "A $expect precondition failed"),
    "SM005": (409, "idempotency-key-reused", "The delta id was already used for another delta"),
    "SM006": (413, "limit-exceeded", "A limit was exceeded"),
    "SM007": (422, "invalid-id", "An identifier is invalid"),
    "SM008": (409, "append-only", "The delta log is append-only"),
    "SM010": (404, "not-found", "Not found"),
    "SM009": (400, "invalid-slice", "The slice request is invalid"),
    "SM011": (422, "policy-violation", "The delta breaks a policy"),
    "SM012": (422, "invalid-policy", "The rule or key is invalid"),
    "SM013": (403, "forbidden", "Not allowed"),
    "SM014": (409, "batch-aborted", "Another write of the all-or-nothing batch failed: nothing was applied"),
    # a version, or the log after one, that sms.compact dropped: the state's history starts later
    "SM015": (404, "history-compacted", "The state's history before this version was compacted away"),
    # a statement reached rows of a tenant its transaction does not act for (row-level security):
    # the same answer as for anything that is not there
    "42501": (404, "not-found", "Not found"),
    "42601": (400, "invalid-predicate", "The where predicate is not valid SQL/JSON path"),
    "42704": (400, "invalid-predicate", "The where predicate names a variable that is not there"),
    "2201B": (400, "invalid-predicate", "A regular expression in the predicate is invalid"),
    "22003": (422, "number-out-of-range", "A number is out of range"),
    "22021": (400, "malformed-request", "The request holds a byte sequence that is not valid text"),
    "22P02": (400, "malformed-json", "The body is not valid JSON"),
    "22P05": (400, "malformed-json", "The body holds text PostgreSQL cannot store"),
    "54000": (413, "limit-exceeded", "A value is too large"),
    "54001": (413, "limit-exceeded", "A value is nested too deeply"),
    "57014": (503, "statement-timeout", "The database took too long"),
    "57P01": (503, "database-unavailable", "The database is shutting down"),
    "57P02": (503, "database-unavailable", "The database is shutting down"),
    "57P03": (503, "database-unavailable", "The database is starting up"),
    # an erasure run where its tenant's rows are not (on Citus without sms migrate --citus's delegation)
    "0A000": (503, "database-not-ready", "The database is not set up to run this here (run sms migrate --citus)"),
    # whole classes, for the codes not named above
    "08": (503, "database-unavailable", "The connection to the database failed"),
    "22": (422, "invalid-value", "A value is invalid"),
    "23": (409, "conflict", "The write conflicts with what is stored"),
    "40": (503, "database-busy", "The database asked to retry"),
    "42": (503, "database-not-ready", "The database schema is not the one this service needs (run sms migrate)"),
    "53": (503, "database-busy", "The database is out of resources"),
    "54": (413, "limit-exceeded", "A value is too large"),
    "55": (503, "database-busy", "The database is busy"),
    "57": (503, "database-unavailable", "The database stopped the statement"),
    "58": (503, "database-unavailable", "The database failed"),
    "XX": (503, "database-unavailable", "The database failed"),
}

# SQLSTATEs whose server message would tell a client about the schema's internals (an index's name):
# their problem says this instead.
GENERIC_DETAILS = {
    "54000": "a key or value is too large to store (keys are at most SMS_MAX_KEY_LENGTH characters)",
}


class Problem(Exception):
    """An error with an HTTP status, a stable type, a human detail and response headers."""

    def __init__(
        self, status: int, slug: str, title: str, detail: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.title = title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def copy(self) -> Problem:
        """The same problem, to raise again elsewhere (each raise keeps its own traceback)."""
        return Problem(self.status, self.slug, self.title, self.detail, dict(self.headers), **self.extra)

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "success": False,
            **self.extra,
        }


def malformed(detail: str) -> Problem:
    return Problem(400, "malformed-request", "The request is malformed", detail)


def invalid(detail: str, **extra: Any) -> Problem:
    return Problem(422, "invalid-delta", "The delta is invalid", detail, **extra)


def too_large(detail: str, **extra: Any) -> Problem:
    return Problem(413, "limit-exceeded", "A limit was exceeded", detail, **extra)


def invalid_id(detail: str, **extra: Any) -> Problem:
    return Problem(422, "invalid-id", "An identifier is invalid", detail, **extra)


def invalid_slice(detail: str) -> Problem:
    return Problem(400, "invalid-slice", "The slice request is invalid", detail)


def not_found(detail: str = "there is nothing here") -> Problem:
    return Problem(404, "not-found", "Not found", detail)


def policy_violation(result: dict[str, Any]) -> Problem:
    """The 422 of a delta a policy refused (a refusal sms.apply_ops returned)."""
    return Problem(
        422,
        "policy-violation",
        "The delta breaks a policy",
        result["message"],
        violations=result["violations"],
        current_version=result["version"],
        refusal_id=result["refusal_id"],
    )


def database_busy(detail: str) -> Problem:
    return Problem(503, "database-busy", "The database is busy", detail)


def database_unavailable(detail: str = "the database is unavailable") -> Problem:
    return Problem(503, "database-unavailable", "The database is unavailable", detail)


def from_sqlstate(sqlstate: str | None, message: str, detail: str | None) -> Problem | None:
    """The problem for a database error, or None when the error is not in the table (a bug)."""
    known = SQLSTATE_PROBLEMS.get(sqlstate or "") or SQLSTATE_PROBLEMS.get((sqlstate or "")[:2])
    if known is None:
        return None
    status, slug, title = known
    extra: dict[str, Any] = {}
    if detail and detail.startswith("{"):
        try:
            extra = jsontext.decode(detail)  # exact numbers: "current" values are reported as stored
        except ValueError:
            extra = {}
    return Problem(status, slug, title, GENERIC_DETAILS.get(sqlstate or "", message), **extra)
