"""API keys and who a request acts as (DESIGN §10).

A key is `sms_<key id>_<secret>`: made here, shown once, stored only as the SHA-256 of the whole
key. It names the tenants it may touch and a scope — read < write < admin, each allowing what the
ones before allow — and optionally the actor its writes are made as, the highest AML level it may
claim, a rate limit and an expiry. A request acts as a `Principal`: a key's, or, with no key (the
protected mode on loopback, or --insecure-no-auth), every tenant's.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from app.domain.delta import WriteMeta

SCOPES = ("read", "write", "admin")  # each allows what the ones before it allow
KEY_PREFIX = "sms_"
_KEY = re.compile(r"^sms_(k_[A-Za-z0-9]{12})_[A-Za-z0-9_-]{43}$")
_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_DURATION = re.compile(r"^\s*(\d{1,6})\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def key_hash(key: str) -> bytes:
    """What is stored of a key: the SHA-256 of all of it."""
    return hashlib.sha256(key.encode()).digest()


def looks_like_key(key: str) -> bool:
    return _KEY.match(key) is not None


def scopes_up_to(scope: str) -> tuple[str, ...]:
    """The scopes a key with `scope` holds: read, write, admin up to and including it."""
    return SCOPES[: SCOPES.index(scope) + 1]


def parse_duration(text: str) -> timedelta:
    """`30d`, `12h`, `15m`, `2w`, `90s` as a timedelta; ValueError otherwise."""
    found = _DURATION.match(text)
    if found is None or int(found.group(1)) == 0:
        raise ValueError(f"{text!r} is no duration: write a whole number and a unit, e.g. 30d, 12h, 15m")
    return timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})


@dataclass(frozen=True)
class NewKey:
    """A key being made: the key itself (shown once) and what is stored of it."""

    key: str
    key_id: str
    tenants: tuple[str, ...]
    scopes: tuple[str, ...]
    actor: str | None = None
    aml_level: int | None = None
    expires_at: datetime | None = None
    rate_limit: float | None = None
    label: str | None = None

    @property
    def secret_hash(self) -> bytes:
        return key_hash(self.key)

    @classmethod
    def make(
        cls,
        tenants: list[str],
        scope: str,
        *,
        actor: str | None = None,
        aml_level: int | None = None,
        expires_in: timedelta | None = None,
        rate_limit: float | None = None,
        label: str | None = None,
    ) -> NewKey:
        """A fresh random key with `scope` (and the scopes below it)."""
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}, not {scope!r}")
        key_id = "k_" + "".join(secrets.choice(_ALPHABET) for _ in range(12))
        return cls(
            key=f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}",
            key_id=key_id,
            tenants=tuple(dict.fromkeys(tenants)),
            scopes=scopes_up_to(scope),
            actor=actor,
            aml_level=aml_level,
            expires_at=datetime.now(UTC) + expires_in if expires_in else None,
            rate_limit=rate_limit,
            label=label,
        )


def highest_scope(scopes: list[str] | tuple[str, ...]) -> str:
    """The highest of several scopes: what a key given them may do."""
    known = [scope for scope in scopes if scope in SCOPES]
    if not known:
        raise ValueError(f"scopes are among {', '.join(SCOPES)}")
    return max(known, key=SCOPES.index)


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: an API key, or nobody in particular (tenants None: every tenant)."""

    key_id: str | None
    tenants: frozenset[str] | None
    scope: str
    actor: str | None = None
    aml_level: int | None = None
    rate_limit: float | None = None

    @classmethod
    def from_key(cls, record: dict[str, Any]) -> Principal:
        """The principal of a key record (as sms.authenticate returns it)."""
        return cls(
            key_id=record["key_id"],
            tenants=frozenset(record["tenants"]),
            scope=highest_scope(record["scopes"]),
            actor=record.get("actor"),
            aml_level=record.get("aml_level"),
            rate_limit=float(record["rate_limit"]) if record.get("rate_limit") is not None else None,
        )

    def may_touch(self, tenant_id: str) -> bool:
        return self.tenants is None or tenant_id in self.tenants

    def allows(self, scope: str) -> bool:
        return SCOPES.index(self.scope) >= SCOPES.index(scope)

    def stamp(self, meta: WriteMeta) -> WriteMeta:
        """A write's metadata as this principal may make it: a key's actor replaces the one the
        request names (kept as meta.claimed_actor), and the AML level is the key's, or the lower
        one the request claims (meta.aml_level; a higher claim is kept as meta.claimed_aml_level).
        With no key, the claimed level stands."""
        extra = dict(meta.meta)
        actor = meta.actor
        if self.actor is not None and actor != self.actor:
            if actor is not None:
                extra["claimed_actor"] = actor
            actor = self.actor
        claimed = _level(extra.get("aml_level"))
        if self.aml_level is not None:
            if claimed is None or claimed > self.aml_level:
                if claimed is not None:
                    extra["claimed_aml_level"] = claimed
                claimed = self.aml_level
        if claimed is not None:
            extra["aml_level"] = claimed
        return replace(meta, actor=actor, meta=extra)


def _level(raw: Any) -> int | None:
    """A claimed AML level, or None when it is none or not a whole number."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and re.fullmatch(r"\s*-?\d{1,9}\s*", raw):
        return int(raw)
    return None
