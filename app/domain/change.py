"""One applied delta as the change feed delivers it, and where a subscriber is in the log."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from app.domain import jsontext


@dataclass(frozen=True)
class Change:
    """One applied delta: its state, version, metadata and normalised ops."""

    tenant_id: str
    fsa_id: str
    version: int
    delta_id: str
    actor: str | None
    lineage_id: str | None
    trace_id: str | None
    parent_id: str | None
    meta: dict[str, Any]
    ops: list[dict[str, Any]]
    paths: list[str]
    collections: list[str]
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """Its fields, as JSON takes them. Shallow: dataclasses.asdict's deep copy of meta and ops
        cost ten times as much, for each change the feed delivers, and nothing changes them."""
        data = {name: getattr(self, name) for name in _CHANGE_FIELDS}
        data["created_at"] = self.created_at.isoformat()
        return data

    @functools.cached_property
    def json(self) -> bytes:
        """As JSON (exact numbers), encoded once however many subscribers send it."""
        return jsontext.encode(self.to_dict())


_CHANGE_FIELDS = tuple(field.name for field in fields(Change))


@dataclass(frozen=True, order=True)
class Position:
    """Where a subscriber is: after (feed position, fsa_id, version) of a tenant's log — the order
    the tenant feed reads in (sms.feed_after); one state's feed goes by version alone (its feed
    position and fsa_id then stay as given)."""

    feed_position: int = 0
    fsa_id: str = ""
    version: int = 0

    def before(self, other: Position, *, one_state: bool) -> bool:
        """Whether this position comes before `other` in the feed's order."""
        return self.version < other.version if one_state else self < other
