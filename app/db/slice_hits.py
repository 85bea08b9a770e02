"""Slice-cache hits, counted in memory and added to the cache's rows now and then.

A slice answered from the summary cache counted its hit on the cache's row: a new row version and
its WAL on every read, about a quarter of what a cached slice cost PostgreSQL. Now each process
counts the hits of rows that were still valid as last validated, per tenant, state and cache key,
and adds them to the rows every SMS_SLICE_HITS_SECONDS (app.db.periodic), one statement per tenant
(sms.count_slice_hits), and once more when it stops. A hit that had to check its row's fingerprint
is counted by the database as before (its row stores the collections' versions it is now valid
at). The counts — `hits`, and `last_used_at`, by which the cache evicts — may lag by that interval; a
process killed outright forgets its last interval's hits, which loses nothing else.
"""

from __future__ import annotations

Hits = dict[tuple[str, str], int]  # (state, cache key) → hits


class SliceHits:
    """The hits one process counted and has not added up yet, per tenant."""

    def __init__(self) -> None:
        self._tenants: dict[str, Hits] = {}

    def count(self, tenant_id: str, fsa_id: str, cache_key: str) -> None:
        hits = self._tenants.setdefault(tenant_id, {})
        hits[fsa_id, cache_key] = hits.get((fsa_id, cache_key), 0) + 1

    def take(self) -> dict[str, Hits]:
        """Everything counted so far; counting starts again from nothing."""
        taken, self._tenants = self._tenants, {}
        return taken

    def give_back(self, tenant_id: str, hits: Hits) -> None:
        """Hits taken but not added up (the database away): they go with the next ones."""
        mine = self._tenants.setdefault(tenant_id, {})
        for key, count in hits.items():
            mine[key] = mine.get(key, 0) + count
