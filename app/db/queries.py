"""The one module that runs SQL at request time: typed async functions in, plain values out.

The merge lives in SQL (`sms.apply_delta`, `sms.document`, …). JSON results are built by
PostgreSQL and handed on as text, so they are never decoded and re-encoded on the way out and
numbers keep their exact decimal value. Driver errors are wrapped once, into `app.errors.Problem`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from app.domain import jsontext
from app.domain.delta import WriteMeta
from app.errors import database_unavailable, from_sqlstate

log = logging.getLogger(__name__)

_APPLY = """
SELECT sms.{function}($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8::text::jsonb, $9, $10)::text
"""

# Built as text rather than with json_build_object, whose output pads every colon with spaces.
_READ_STATE = """
SELECT s.version,
       CASE WHEN s.version IS DISTINCT FROM $3 THEN
           '{"tenant_id":' || to_json($1::text) || ',"fsa_id":' || to_json($2::text)
           || ',"version":' || s.version || ',"state":' || sms.document($1, $2)::text || '}'
       END
  FROM (SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0) AS version) s
"""

_READ_DELTAS = """
WITH page AS (
    SELECT version, delta_id, actor, lineage_id, trace_id, parent_id, meta, ops, paths, created_at
      FROM sms.deltas
     WHERE tenant_id = $1 AND fsa_id = $2 AND version > $3
     ORDER BY version
     LIMIT $4 + 1
)
SELECT '{"tenant_id":' || to_json($1::text) || ',"fsa_id":' || to_json($2::text) || ',"since":' || $3::bigint
       || ',"version":' || coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0)
       || ',"deltas":' || coalesce((SELECT to_json(array_agg(p ORDER BY p.version))
                                     FROM (SELECT * FROM page ORDER BY version LIMIT $4) p), '[]')::text
       || ',"more":' || ((SELECT count(*) FROM page) > $4)::text || '}'
"""


_READ_SLICE = """
WITH r AS (SELECT sms.read_slice($1, $2, $3, $4, $5, $6::jsonpath, $7) AS read),
hit AS (
    -- count the hit without ever waiting: a row another reader is bumping is skipped
    -- and remember the collections' versions it was found valid at
    UPDATE sms.summary_cache c SET hits = c.hits + 1, last_used_at = now(), coarse = r.read ->> 'coarse'
      FROM r
     WHERE (r.read ->> 'cached')::boolean AND c.tenant_id = $1 AND c.fsa_id = $2
       AND c.ctid = (SELECT ctid FROM sms.summary_cache
                      WHERE tenant_id = $1 AND fsa_id = $2 AND cache_key = r.read ->> 'cache_key'
                        FOR UPDATE SKIP LOCKED)
)
SELECT read FROM r
"""


_READ_STATE_AT = """
SELECT '{"tenant_id":' || to_json($1::text) || ',"fsa_id":' || to_json($2::text) || ',"version":' || $3::bigint
       || ',"state":' || sms.document_at($1, $2, $3)::text || '}'
"""

_READ_LINEAGE = """
SELECT '{"tenant_id":' || to_json($1::text) || ',"lineage_id":' || to_json($2::text) || ',"deltas":'
       || coalesce((SELECT to_json(array_agg(d ORDER BY d.created_at, d.fsa_id, d.version)) FROM (
              SELECT fsa_id, version, delta_id, actor, lineage_id, trace_id, parent_id, meta, ops, paths, created_at
                FROM sms.deltas WHERE tenant_id = $1 AND lineage_id = $2
               ORDER BY created_at, fsa_id, version LIMIT $3) d), '[]')::text || '}'
"""

_READ_COMMENTS = """
SELECT coalesce(to_json(array_agg(c ORDER BY c.comment_id DESC)), '[]')::text FROM (
    SELECT comment_id, task_id, author, body, is_blocker, lineage_id, created_at FROM sms.task_comments
     WHERE tenant_id = $1 AND fsa_id = $2 AND task_id = $3 ORDER BY comment_id DESC LIMIT $4) c
"""

_WRITE_FUNCTIONS = {
    "rollback": "SELECT sms.rollback($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)::text",
    "heartbeat": "SELECT sms.heartbeat($1, $2, $3, $4)::text",
    "add_comment": "SELECT sms.add_comment($1, $2, $3, $4, $5, $6, $7)::text",
}

_READ_FEED = """
WITH log AS (
    SELECT * FROM sms.feed_after($1, $2, $3::text::xid8, $4, $5, $7) WITH ORDINALITY
), slices AS (
    -- the slice filter, parsed once per state, with that state's aliases
    SELECT fsa_id, sms.parse_slice($6, sms.aliases_of($1, fsa_id)) AS parts
      FROM (SELECT DISTINCT fsa_id FROM log) states
     WHERE $6::text IS NOT NULL
)
SELECT log.fsa_id, log.version, log.delta_id::text AS delta_id, log.actor, log.lineage_id, log.trace_id,
       log.parent_id, log.meta, log.ops, log.paths, log.collections, log.created_at, log.tx_id::text AS tx_id,
       CASE WHEN $6::text IS NULL THEN true ELSE sms.touches_slice(log.ops, slices.parts) END AS wanted
  FROM log LEFT JOIN slices USING (fsa_id)
 ORDER BY log.ordinality
"""


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb parameters are JSON text as received (or Python values to encode); results decode.
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name,
            schema="pg_catalog",
            encoder=lambda v: v if isinstance(v, str) else jsontext.encode(v).decode(),
            decoder=jsontext.decode,
        )


class Database:
    """An asyncpg pool and the service's queries."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 20,
        statement_timeout_ms: int = 5000,
        notify: bool = True,
        snapshot_every: int = 1000,
    ) -> Database:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                init=_init_connection,
                server_settings={
                    "application_name": "sms",
                    "statement_timeout": str(statement_timeout_ms),
                    "sms.notify": "on" if notify else "off",
                    "sms.snapshot_every": str(snapshot_every),
                },
            )
        except (OSError, asyncpg.PostgresError) as exc:
            raise database_unavailable(f"cannot connect to the database: {type(exc).__name__}") from exc
        return cls(pool)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; database errors leave as `Problem`s."""
        try:
            async with self.pool.acquire() as conn:
                yield conn
        except asyncpg.PostgresError as exc:
            problem = from_sqlstate(exc.sqlstate, exc.args[0] if exc.args else str(exc), getattr(exc, "detail", None))
            if problem is None:
                raise
            raise problem from None
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, TimeoutError) as exc:
            # InternalClientError: the pool resetting a connection the server just dropped
            log.warning("database unavailable: %s", type(exc).__name__)
            raise database_unavailable() from exc

    async def health(self) -> str:
        async with self._connection() as conn:
            return await conn.fetchval("SELECT current_setting('server_version')")

    async def apply_delta(self, tenant_id: str, fsa_id: str, delta: str, meta: WriteMeta) -> str:
        """Apply a delta (JSON text); returns the result object as JSON text."""
        async with self._connection() as conn:
            return await conn.fetchval(
                _APPLY.format(function="apply_delta"), *write_args(tenant_id, fsa_id, delta, meta)
            )

    async def replace_state(self, tenant_id: str, fsa_id: str, document: str, meta: WriteMeta) -> str:
        """Replace the whole state (JSON text), logged as one delta; the result as JSON text."""
        async with self._connection() as conn:
            return await conn.fetchval(
                _APPLY.format(function="replace_state"), *write_args(tenant_id, fsa_id, document, meta)
            )

    async def dry_run(self, tenant_id: str, fsa_id: str, delta: str, meta: WriteMeta) -> dict[str, Any]:
        """Apply a delta inside a transaction that is rolled back: exactly what would happen."""
        async with self._connection() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                current = await conn.fetchval(
                    "SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0)",
                    tenant_id,
                    fsa_id,
                )
                result = await conn.fetchval(
                    _APPLY.format(function="apply_delta"), *write_args(tenant_id, fsa_id, delta, meta)
                )
            finally:
                await tx.rollback()
        outcome = jsontext.decode(result)
        if meta.delta_id is None:
            del outcome["delta_id"]  # a fresh id that no delta will ever carry
        return {**outcome, "current_version": current}

    async def normalize_delta(self, delta: str) -> Any:
        """The normalised ops and preconditions of a delta, checked without touching any state."""
        async with self._connection() as conn:
            return await conn.fetchval("SELECT sms.normalize_delta($1::text::jsonb)", delta)

    async def read_state(
        self, tenant_id: str, fsa_id: str, unless_version: int | None = None
    ) -> tuple[int, str | None]:
        """(version, {"tenant_id","fsa_id","version","state"} as JSON text); the text is None when
        the state is still at `unless_version` (a conditional GET)."""
        async with self._connection() as conn:
            row = await conn.fetchrow(_READ_STATE, tenant_id, fsa_id, unless_version)
        return row[0], row[1]

    async def read_slice(
        self, tenant_id: str, fsa_id: str, spec: str, k: int | None, order: str, where: str | None, options: str
    ) -> dict[str, Any]:
        """A slice through the summary cache (sms.read_slice): cached with its summary body, or
        fresh with the fingerprint to store it under."""
        async with self._connection() as conn:
            return await conn.fetchval(_READ_SLICE, tenant_id, fsa_id, spec, k, order, where, options)

    async def store_slice_summary(self, tenant_id: str, fsa_id: str, read: dict[str, Any], summary: str) -> None:
        async with self._connection() as conn:
            await conn.execute("SELECT sms.store_slice_summary($1, $2, $3, $4)", tenant_id, fsa_id, read, summary)

    async def read_document(self, tenant_id: str, fsa_id: str) -> tuple[int, dict[str, Any]]:
        """(version, the whole state) from one snapshot."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0),"
                " sms.document($1, $2)",
                tenant_id,
                fsa_id,
            )
        return row[0], row[1]

    async def read_feed(
        self,
        tenant_id: str,
        fsa_id: str | None,
        after_tx: str,
        after_fsa: str,
        after_version: int,
        slice_spec: str | None,
        limit: int,
    ) -> list[tuple[Any, bool, str]]:
        """The log after a position (sms.feed_after) as (Change, touches the slice, tx_id)."""
        from app.feed import Change  # the feed's own type; imported here to keep modules acyclic

        async with self._connection() as conn:
            rows = await conn.fetch(
                _READ_FEED, tenant_id, fsa_id, after_tx, after_fsa, after_version, slice_spec, limit
            )
        return [
            (
                Change(tenant_id=tenant_id, **{k: v for k, v in row.items() if k not in ("wanted", "tx_id")}),
                row["wanted"],
                row["tx_id"],
            )
            for row in rows
        ]

    async def aliases(self, tenant_id: str, fsa_id: str) -> dict[str, str]:
        """The aliases of the state's slice specs (sms.aliases_of)."""
        async with self._connection() as conn:
            return await conn.fetchval("SELECT sms.aliases_of($1, $2)", tenant_id, fsa_id)

    async def set_alias(self, tenant_id: str, fsa_id: str, alias: str, collection: str | None) -> dict[str, str]:
        """Sets (or, with no collection, removes) one of the state's own aliases; its aliases after."""
        async with self._connection() as conn:
            return await conn.fetchval("SELECT sms.set_alias($1, $2, $3, $4)", tenant_id, fsa_id, alias, collection)

    async def parse_slice(self, spec: str) -> Any:
        """The parsed parts of a slice spec; a 400 problem when it is invalid."""
        async with self._connection() as conn:
            return await conn.fetchval("SELECT sms.parse_slice($1)", spec)

    async def delta_tx_id(self, tenant_id: str, fsa_id: str, version: int) -> str | None:
        async with self._connection() as conn:
            return await conn.fetchval(
                "SELECT tx_id::text FROM sms.deltas WHERE tenant_id = $1 AND fsa_id = $2 AND version = $3",
                tenant_id,
                fsa_id,
                version,
            )

    async def current_version(self, tenant_id: str, fsa_id: str) -> int:
        async with self._connection() as conn:
            return await conn.fetchval(
                "SELECT coalesce((SELECT version FROM sms.states WHERE tenant_id = $1 AND fsa_id = $2), 0)",
                tenant_id,
                fsa_id,
            )

    async def read_state_at(self, tenant_id: str, fsa_id: str, version: int) -> str:
        """{"tenant_id","fsa_id","version","state"} exactly as the state was at `version`."""
        async with self._connection() as conn:
            return await conn.fetchval(_READ_STATE_AT, tenant_id, fsa_id, version)

    async def documents_at(self, tenant_id: str, fsa_id: str, *versions: int) -> list[Any]:
        """The state at each version, from one snapshot of the database."""
        async with self._connection() as conn:
            return await conn.fetchval(
                "SELECT array_agg(sms.document_at($1, $2, v) ORDER BY o)"
                " FROM unnest($3::bigint[]) WITH ORDINALITY u(v, o)",
                tenant_id,
                fsa_id,
                list(versions),
            )

    async def path_changes(self, tenant_id: str, fsa_id: str, path: str, limit: int) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT * FROM sms.path_changes($1, $2, $3, $4)", tenant_id, fsa_id, path, limit)
        return [dict(row) for row in rows]

    async def lineage(self, tenant_id: str, lineage_id: str, limit: int) -> str:
        """A lineage's deltas across the tenant's states, in time order, as JSON text."""
        async with self._connection() as conn:
            return await conn.fetchval(_READ_LINEAGE, tenant_id, lineage_id, limit)

    async def changes_since(self, tenant_id: str, fsa_id: str, since: int, slice_spec: str | None, max_tokens: int):
        """(sms.changes_since, sms.changes_digest) from one snapshot."""
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT sms.changes_since($1, $2, $3, $4), sms.changes_digest($1, $2, $3, $4, $5)",
                tenant_id,
                fsa_id,
                since,
                slice_spec,
                max_tokens,
            )
        return row[0], row[1]

    async def call_write(self, function: str, *args: Any) -> str:
        """A writing SQL function of the service (rollback, heartbeat, add_comment) -> JSON text."""
        if function not in _WRITE_FUNCTIONS:
            raise ValueError(function)
        async with self._connection() as conn:
            return await conn.fetchval(_WRITE_FUNCTIONS[function], *args)

    async def comments(self, tenant_id: str, fsa_id: str, task_id: str, limit: int) -> str:
        async with self._connection() as conn:
            return await conn.fetchval(_READ_COMMENTS, tenant_id, fsa_id, task_id, limit)

    async def read_deltas(self, tenant_id: str, fsa_id: str, since: int, limit: int) -> str:
        """The log after version `since`, oldest first, at most `limit` entries, as JSON text."""
        async with self._connection() as conn:
            return await conn.fetchval(_READ_DELTAS, tenant_id, fsa_id, since, limit)


def write_args(tenant_id: str, fsa_id: str, body: Any, meta: WriteMeta) -> tuple[Any, ...]:
    return (
        tenant_id,
        fsa_id,
        body,
        meta.actor,
        meta.lineage_id,
        meta.delta_id,
        meta.expected_version,
        jsontext.encode(meta.meta).decode(),
        meta.trace_id,
        meta.parent_id,
    )
