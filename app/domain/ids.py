"""Identifiers: tenants, states, actors, lineages, idempotency keys, tasks, agents.

The same rule as SQL's sms.check_id, checked early: 1 to max_id_length characters, without
control characters and without invisible or direction-changing ones (zero-width spaces and
joiners, soft hyphens, bidirectional marks and overrides, the byte-order mark), which would make
two ids look alike; ids that are segments of a URL path also without "/" and not "." or "..",
which URL normalisation would remove.
"""

from __future__ import annotations

import re

from app.errors import invalid_id

UNSEEN = re.compile(
    "[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u206f\ufeff\ufff9-\ufffb]"
)


def check_id(name: str, value: str, max_length: int, *, segment: bool = False) -> None:
    """Raises the 422 invalid-id problem when `value` is no valid id (a path segment if `segment`)."""
    if not 0 < len(value) <= max_length or UNSEEN.search(value) or (segment and ("/" in value or value in (".", ".."))):
        rule = ', without "/", and not . or ..' if segment else ""
        raise invalid_id(
            f"{name} must be 1 to {max_length} characters without control, invisible or bidirectional characters{rule}",
            field=name,
        )
