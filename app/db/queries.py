"""The one module that runs SQL at request time: typed async functions in, plain values out.

The merge lives in SQL (`sms.apply_delta`, `sms.document`, …). JSON results are built by
PostgreSQL and handed on as text, so they are never decoded and re-encoded on the way out and
numbers keep their exact decimal value. Driver errors are wrapped once, into `app.errors.Problem`.

Every statement acts for the tenants of the request's key (`Database.acting_for`): it starts from
`sms.act_for($n)`, its last parameter, which sets them for its own transaction before anything is
read, and row-level security lets the service's role see nothing else (DESIGN §10). Function calls
read `FROM sms.act_for($n)`; statements that read tables themselves do so in a LATERAL subquery
that waits for it (`WHERE acting … OFFSET 0`).

Reads of a state — slices, whole states, old versions, history, the log and the change feed — go
to a read replica when there are any (SMS_READ_DATABASE_URL), in turn; everything else goes to the
primary. A replica may lag: a read that names a version it must not fall behind (`min_version`,
and a `since`, a `version` or an ETag it reads from) asks the replicas for one that has replayed
it, for at most `read_wait` seconds, and is otherwise answered by the primary. A replica that
fails is skipped for that read: the primary answers.

Nothing outlives a transaction on a connection (the tenants, a `where` read's timeout, advisory
locks are all transaction-level), so the service works through a pooler in transaction mode
(PgBouncer): `transaction_pooling` then keeps no prepared statement and sends no session setting.

On a Citus coordinator (found when connecting; docs/scale-out.md) each statement runs in a
transaction block, so that the tenants it acts for reach the workers with it (act_for's SET LOCAL,
carried by citus.propagate_set_commands = 'local', set in the service's sessions on the
coordinator); the service's other settings are its role's, which
Citus gives every node (set by `sms migrate --citus`), since a delegated call runs in a session of
the worker's; and a write is a bare call of its function after act_for, which Citus runs on the
tenant's node in one round trip (delegation) instead of statement by statement from the coordinator.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import msgspec

from app.db.slice_hits import SliceHits
from app.domain import jsontext
from app.domain.change import Change, Position
from app.domain.delta import WriteMeta
from app.domain.keys import NewKey
from app.errors import Problem, database_busy, database_unavailable, from_sqlstate, policy_violation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Call:
    """A call of one of the service's SQL functions, `sms.<function>(<arguments>)` with its
    parameters $1..$n, whose jsonb result is handed on as JSON text (`text`) or decoded. On one
    server it is one statement, `SELECT <call>::text FROM sms.act_for($n+1)`; on Citus act_for
    first, then the bare call, which Citus delegates whole to the tenant's node (see the module's
    docstring; CALLS lists them for `sms migrate --citus`)."""

    expression: str
    arguments: int
    text: bool = True
    relaxed: bool = False  # a cache's write, whose commit need not wait for the WAL (_RELAXED_COMMIT)

    @property
    def alone(self) -> str:
        cast = "::text" if self.text else ""
        relaxed = f", {_RELAXED_COMMIT}" if self.relaxed else ""
        return f"SELECT {self.expression}{cast} FROM sms.act_for(${self.arguments + 1}){relaxed}"

    @property
    def bare(self) -> str:
        return f"SELECT {self.expression}"

    @property
    def function(self) -> str:
        return self.expression.split("(", 1)[0].removeprefix("sms.")


_WRITE = "($1, $2, $3::text::jsonb, $4, $5, $6, $7, $8::text::jsonb, $9, $10)"  # write_args
APPLY = Call(f"sms.apply_delta{_WRITE}", 10)
REPLACE = Call(f"sms.replace_state{_WRITE}", 10)
APPLY_BATCH = Call("sms.apply_deltas($1, $2, $3::text::jsonb, $4)", 4)
ROLLBACK = Call("sms.rollback($1, $2, $3, $4, $5, $6, $7, $8::text::jsonb, $9, $10)", 10)
ADD_COMMENT = Call("sms.add_comment($1, $2, $3, $4, $5, $6, $7)", 7, text=False)
SET_ALIAS = Call("sms.set_alias($1, $2, $3, $4)", 4, text=False)
SET_POLICY = Call("sms.set_policy($1, $2, $3::jsonb, $4)", 4, text=False)
SET_EXPIRY = Call("sms.set_expiry($1, $2, $3)", 3)
EXPIRE = Call("sms.expire_state($1, $2)", 2, text=False)
PURGE = Call("sms.purge_state($1, $2, $3, $4)", 4)
COMPACT = Call("sms.compact($1, $2, $3, $4, $5)", 5)
STORE_SUMMARY = Call("sms.store_slice_summary($1, $2, $3, $4)", 4, text=False, relaxed=True)
COUNT_HITS = Call("sms.count_slice_hits($1, $2, $3, $4)", 4, text=False, relaxed=True)
CALLS = (
    APPLY,
    REPLACE,
    APPLY_BATCH,
    ROLLBACK,
    ADD_COMMENT,
    SET_ALIAS,
    SET_POLICY,
    SET_EXPIRY,
    EXPIRE,
    PURGE,
    COMPACT,
    STORE_SUMMARY,
    COUNT_HITS,
)
_ACT_FOR = "SELECT sms.act_for($1)"

# Built as text rather than with json_build_object, whose output pads every colon with spaces.
_READ_STATE = """
SELECT s.version,
       CASE WHEN s.version IS DISTINCT FROM $3 THEN
           '{"tenant_id":' || to_json($1::text) || ',"fsa_id":' || to_json($2::text)
           || ',"version":' || s.version || ',"state":' || sms.document_text($1, $2) || '}'
       END
  FROM sms.act_for($4) acting, LATERAL (SELECT sms.current_version($1, $2) AS version WHERE acting OFFSET 0) s
"""

_READ_DELTAS = "SELECT sms.read_deltas($1, $2, $3, $4) FROM sms.act_for($5)"


# A slice read writes at most the cache's statistics (a revalidated hit, see app.db.slice_hits): its
# commit need not wait for the WAL to reach the disk (synchronous_commit off, for this transaction
# alone). A crash may forget the last few hits; it cannot lose or corrupt anything.
_RELAXED_COMMIT = "(SELECT set_config('synchronous_commit', 'off', true)) relaxed"
_ACT_FOR_RELAXED = f"SELECT sms.act_for($1) FROM {_RELAXED_COMMIT}"

# count_hits false: a plain hit writes nothing, and the process counts it (app.db.slice_hits)
_READ_SLICE = (
    "SELECT sms.read_slice_counted($1, $2, $3, $4, $5, $6::jsonpath, $7, false)"
    f" FROM sms.act_for($8), {_RELAXED_COMMIT}"
)

# A replica is read-only: its hits are counted by the process too, and added up on the primary.
_READ_SLICE_ON_REPLICA = "SELECT sms.read_slice($1, $2, $3, $4, $5, $6::jsonpath, $7) FROM sms.act_for($8)"

_CURRENT_VERSION = "SELECT sms.current_version($1, $2) FROM sms.act_for($3)"

FIRST_REPLICA_POLL = 0.002  # seconds between looks at replicas that have not replayed a version yet...
MAX_REPLICA_POLL = 0.05  # ... doubling up to this


_READ_STATE_AT = """
SELECT '{"tenant_id":' || to_json($1::text) || ',"fsa_id":' || to_json($2::text) || ',"version":' || $3::bigint
       || ',"state":' || sms.document_at_text($1, $2, $3) || '}'
  FROM sms.act_for($4)
"""

_READ_LINEAGE = """
SELECT '{"tenant_id":' || to_json($1::text) || ',"lineage_id":' || to_json($2::text) || ',"deltas":'
       || coalesce((SELECT to_json(array_agg(d ORDER BY d.created_at, d.fsa_id, d.version)) FROM (
              SELECT fsa_id, version, delta_id, actor, lineage_id, trace_id, parent_id, meta, ops, paths, created_at
                FROM sms.deltas WHERE tenant_id = $1 AND lineage_id = $2
               ORDER BY created_at, fsa_id, version LIMIT $3) d), '[]')::text || '}'
  FROM sms.act_for($4)
"""

# Comments in the original service's shapes: the list as {"task_id", "comments"}, each comment's
# markdown also as body_md, and success on a comment just made.
_READ_COMMENTS = """
SELECT json_build_object('tenant_id', $1::text, 'fsa_id', $2::text, 'task_id', $3::text, 'comments', (
         SELECT coalesce(json_agg(c ORDER BY c.comment_id DESC), '[]') FROM (
            SELECT comment_id, task_id, author, body, body AS body_md, is_blocker, lineage_id, created_at
              FROM sms.task_comments
             WHERE tenant_id = $1 AND fsa_id = $2 AND task_id = $3 ORDER BY comment_id DESC LIMIT $4) c))::text
  FROM sms.act_for($5)
"""

_READ_FEED = """
WITH log AS (
    SELECT f.* FROM sms.act_for($7) acting,
           LATERAL (SELECT * FROM sms.feed_after($1, $2, $3, $4, $6) WITH ORDINALITY
                     WHERE acting OFFSET 0) f
), slices AS (
    -- each slice filter, parsed once per state, with that state's aliases
    SELECT states.fsa_id, specs.n, sms.parse_slice(specs.spec, sms.aliases_of($1, states.fsa_id)) AS parts
      FROM (SELECT DISTINCT fsa_id FROM log) states, unnest($5::text[]) WITH ORDINALITY specs(spec, n)
)
SELECT log.fsa_id, log.version, log.delta_id::text AS delta_id, log.actor, log.lineage_id, log.trace_id,
       log.parent_id, log.meta, log.ops, log.paths, log.collections, log.created_at, log.feed_position,
       ARRAY(SELECT sms.touches_slice(log.ops, s.parts) FROM slices s WHERE s.fsa_id = log.fsa_id ORDER BY s.n)
           AS wanted
  FROM log
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


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset of a connection given back: nothing beyond the ROLLBACK of an unfinished
    transaction, which asyncpg does itself. Whatever the service sets lasts one transaction — the
    tenants it acts for (sms.act_for), a where query's timeout — its advisory locks are
    transaction-level and pooled connections never LISTEN, so the default reset (RESET ALL,
    pg_advisory_unlock_all(), UNLISTEN *, CLOSE ALL) would cost a second round trip per request to
    undo nothing. tests/test_rls.py checks that no tenant outlives its statement on a connection."""


class Database:
    """An asyncpg pool and the service's queries, acting for `tenants` (see the module's docstring;
    None acts for none, which for any role but the tables' owner means no row)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        tenants: list[str] | None = None,
        *,
        acquire_timeout: float = 5.0,
        where_timeout_ms: int = 1000,
        heavy: asyncio.Semaphore | None = None,
        replicas: Sequence[asyncpg.Pool] = (),
        read_wait: float = 1.0,
        turns: itertools.count | None = None,
        citus: bool = False,
        slice_hits: SliceHits | None = None,
    ) -> None:
        self.pool = pool
        self.tenants = tenants
        self.acquire_timeout = acquire_timeout
        self.where_timeout_ms = where_timeout_ms
        # Expensive reads (whole states, old versions, history, slices with `where`) take turns for
        # half of the pool, so that writes and /health always find a connection.
        self.heavy = heavy or asyncio.Semaphore(max(1, pool.get_max_size() // 2))
        self.replicas = tuple(replicas)  # a pool on each read replica
        self.read_wait = read_wait  # seconds a read waits for a replica to replay the version it names
        self._turns = turns or itertools.count()  # whose turn among the replicas, shared by acting_for's copies
        self.citus = citus  # a Citus coordinator: see the module's docstring
        # counted by read_slice, added up by flush_slice_hits; shared by acting_for's copies
        self.slice_hits = SliceHits() if slice_hits is None else slice_hits

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
        where_timeout_ms: int = 1000,
        max_depth: int = 32,
        max_key_length: int = 512,
        read_dsns: Sequence[str] = (),
        read_wait_ms: int = 1000,
        transaction_pooling: bool = False,
    ) -> Database:
        """A pool on `dsn`, and one on each read replica of `read_dsns`. Connecting and waiting for
        a connection give up after the statement timeout (at least 5 s), each query a second after
        it, so an unreachable database is a prompt 503, never a hang.

        With `transaction_pooling` (the URLs lead to a pooler in transaction mode, such as
        PgBouncer) a connection's server session changes between transactions: no statement is
        prepared for later, and no setting is sent but the application's name (PgBouncer refuses
        others). The server's sessions must then hold the service's settings themselves — the role's
        (`ALTER ROLE … SET`) or the pooler's `connect_query` — or a SessionSettingsError says
        which; the statement timeout is the client's then, cancelling a second later."""
        timeout = max(5.0, statement_timeout_ms / 1000)
        citus = await _is_citus(dsn, timeout)
        session = session_settings(notify, snapshot_every, max_depth, max_key_length)
        options: dict[str, Any] = {
            "min_size": min_size,
            "max_size": max_size,
            "init": _init_connection,
            "reset": _keep_session,
            "timeout": timeout,
            "command_timeout": statement_timeout_ms / 1000 + 1,  # the server's statement timeout answers first
            "server_settings": {"application_name": "sms"},
        }
        if transaction_pooling:
            options["statement_cache_size"] = 0  # asyncpg then parses each statement again where it runs
        elif citus:
            # the service's settings are the role's (set on every node by sms migrate --citus)
            options["server_settings"] |= {
                "statement_timeout": str(statement_timeout_ms),
                "citus.propagate_set_commands": "local",
                # Citus hides shards from catalog queries with a filter that reads its metadata per
                # row: asyncpg's look-up of a type (an array's, once per connection) took ~1 s on a
                # coordinator, and a burst of new connections timed out; the service names no shard
                "citus.override_table_visibility": "off",
            }
        else:
            options["server_settings"] |= {"statement_timeout": str(statement_timeout_ms), **session}
        pools: list[asyncpg.Pool] = []
        try:
            for url in (dsn, *read_dsns):
                pools.append(await asyncpg.create_pool(url, **options))
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            await asyncio.gather(*(pool.close() for pool in pools))
            which = "the database" if not pools else f"read replica {len(pools)} (SMS_READ_DATABASE_URL)"
            raise database_unavailable(f"cannot connect to {which}: {type(exc).__name__}: {exc}") from exc
        db = cls(
            pools[0],
            acquire_timeout=timeout,
            where_timeout_ms=min(where_timeout_ms, statement_timeout_ms),
            replicas=pools[1:],
            read_wait=read_wait_ms / 1000,
            citus=citus,
        )
        if transaction_pooling or citus:
            try:
                await db._check_session(session)
            except BaseException:
                await db.close()
                raise
        return db

    def acting_for(self, tenants: Sequence[str] | None) -> Database:
        """The same pools, their statements acting for these tenants."""
        return type(self)(
            self.pool,
            None if tenants is None else sorted(tenants),
            acquire_timeout=self.acquire_timeout,
            where_timeout_ms=self.where_timeout_ms,
            heavy=self.heavy,
            replicas=self.replicas,
            read_wait=self.read_wait,
            turns=self._turns,
            citus=self.citus,
            slice_hits=self.slice_hits,
        )

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in (self.pool, *self.replicas)))

    async def _check_session(self, wanted: dict[str, str]) -> None:
        """Refuses sessions whose settings are not `wanted` (each counted as the service's SQL
        counts it when it is not set), naming the ALTER ROLE that would make them so."""
        async with self._connection() as conn:
            role, database, *values = await conn.fetchrow(_SESSION_SETTINGS)
        held = dict(zip(SESSION_SETTINGS, values, strict=True))
        differ = [
            f"{name} is {held[name]!r}, not {value!r}: ALTER ROLE {role} IN DATABASE {database} SET {name} = {value!r}"
            for name, value in wanted.items()
            if value != held[name]
        ]
        if differ and self.citus:
            raise SessionSettingsError(
                "on Citus the service's settings must be its role's, which every node gives the calls run there, "
                "and they differ: " + "; ".join(differ) + " (sms migrate --citus sets them from the service's settings)"
            )
        if differ:
            raise SessionSettingsError(
                "through a transaction pooler the service cannot send its sessions' settings, and the server's "
                "sessions have others: " + "; ".join(differ) + " (then have the pooler reconnect: PgBouncer's "
                "RECONNECT), or set them in the pooler's connect_query"
            )

    @contextlib.asynccontextmanager
    async def _connection(
        self, heavy: bool = False, pool: asyncpg.Pool | None = None, snapshot: bool = False
    ) -> AsyncIterator[asyncpg.Connection]:
        """A connection of `pool` (default: the primary's; for an expensive read, one of its share:
        `heavy`); database errors leave as `Problem`s. Giving the connection back never fails the
        work done on it: a statement that committed has its answer, even when the pool's reset of
        the connection meets a server that is going down just then. On Citus its work is one
        transaction block, of one snapshot for a read of a state (`snapshot`): each statement a
        function sends to the tenant's node would otherwise see a moment of its own there."""
        pool = pool or self.pool
        if heavy:
            async with self._heavy_turn():
                async with self._connection(pool=pool, snapshot=snapshot) as conn:
                    yield conn
            return
        try:
            conn = await pool.acquire(timeout=self.acquire_timeout)
            try:
                if self.citus and not conn.is_in_transaction():
                    async with conn.transaction(isolation="repeatable_read" if snapshot else None):
                        yield conn
                else:
                    yield conn
            finally:
                await self._release(pool, conn)
        except asyncpg.PostgresError as exc:
            problem = from_sqlstate(exc.sqlstate, exc.args[0] if exc.args else str(exc), getattr(exc, "detail", None))
            if problem is None:
                raise
            raise problem from None
        except (OSError, asyncpg.InterfaceError, asyncpg.InternalClientError, TimeoutError) as exc:
            # InternalClientError: the pool resetting a connection the server just dropped
            log.warning("database unavailable: %s", type(exc).__name__)
            raise database_unavailable() from exc

    @contextlib.asynccontextmanager
    async def _heavy_turn(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(self.acquire_timeout):
                await self.heavy.acquire()
        except TimeoutError:
            raise database_busy("too many expensive reads are running; retry in a moment") from None
        try:
            yield
        finally:
            self.heavy.release()

    async def _release(self, pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
        try:
            await pool.release(conn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, TimeoutError):
            log.warning("a connection could not be reset; the pool replaces it")

    async def _value(self, query: str, *args: Any, heavy: bool = False) -> Any:
        async with self._connection(heavy) as conn:
            return await conn.fetchval(query, *args, self.tenants)

    async def _row(self, query: str, *args: Any, heavy: bool = False) -> asyncpg.Record:
        async with self._connection(heavy) as conn:
            return await conn.fetchrow(query, *args, self.tenants)

    async def _rows(self, query: str, *args: Any, heavy: bool = False) -> list[asyncpg.Record]:
        async with self._connection(heavy) as conn:
            return await conn.fetch(query, *args, self.tenants)

    async def _read(
        self,
        read: Callable[[asyncpg.Connection, bool], Awaitable[Any]],
        tenant_id: str,
        fsa_id: str | None,
        min_version: int | None,
        heavy: bool = False,
    ) -> Any:
        """read(connection, on_replica) on a replica that has `min_version` of the state (see
        `_replica_for`), else on the primary — also when the replica fails meanwhile."""
        async with self._heavy_turn() if heavy else contextlib.nullcontext():
            replica = await self._replica_for(tenant_id, fsa_id, min_version)
            if replica is not None:
                try:
                    async with self._connection(pool=replica, snapshot=True) as conn:
                        return await read(conn, True)
                except Problem as problem:
                    if not _replica_failed(problem):
                        raise
                    log.warning("a read replica failed (%s); the primary answers", problem.slug)
            async with self._connection(snapshot=True) as conn:
                return await read(conn, False)

    async def _read_query(
        self,
        fetch: str,
        tenant_id: str,
        fsa_id: str | None,
        min_version: int | None,
        query: str,
        *args: Any,
        heavy: bool = False,
    ) -> Any:
        """`_read` of one statement, by the connection's method `fetch` (fetchval, fetchrow, fetch)."""
        return await self._read(
            lambda conn, _: getattr(conn, fetch)(query, *args, self.tenants), tenant_id, fsa_id, min_version, heavy
        )

    async def _replica_for(self, tenant_id: str, fsa_id: str | None, min_version: int | None) -> asyncpg.Pool | None:
        """The replica to read from: the next in turn, or with `min_version` the first found to have
        replayed that version of the state, asking them in turn for at most read_wait seconds.
        None: the primary answers (no replica, none caught up in time, or the one asked failed)."""
        if not self.replicas:
            return None
        if min_version is None:
            return self.replicas[next(self._turns) % len(self.replicas)]
        clock = asyncio.get_running_loop().time
        deadline = clock() + self.read_wait
        pause = FIRST_REPLICA_POLL
        while True:
            replica = self.replicas[next(self._turns) % len(self.replicas)]
            try:
                async with self._connection(pool=replica) as conn:
                    if await conn.fetchval(_CURRENT_VERSION, tenant_id, fsa_id, self.tenants) >= min_version:
                        return replica
            except Problem as problem:
                if not _replica_failed(problem):
                    raise
                log.warning("a read replica failed (%s); the primary answers", problem.slug)
                return None
            if clock() + pause > deadline:
                return None
            await asyncio.sleep(pause)
            pause = min(2 * pause, MAX_REPLICA_POLL)

    async def health(self) -> str:
        async with self._connection() as conn:
            return await conn.fetchval("SELECT current_setting('server_version')")

    async def schema_revision(self) -> str | None:
        """The revision the database is migrated to (sms.schema_revision); None when it is older
        than the revision that made that function."""
        async with self._connection() as conn:
            try:
                return await conn.fetchval("SELECT sms.schema_revision()")
            except asyncpg.UndefinedFunctionError:
                return None

    def pool_usage(self) -> tuple[int, int, int]:
        """Of the primary's pool: (connections serving a query now, connections open, the most it may open)."""
        size = self.pool.get_size()
        return size - self.pool.get_idle_size(), size, self.pool.get_max_size()

    async def check_role(self) -> None:
        """Refuses a role that row-level security does not bind (a superuser, one with BYPASSRLS
        or the tables' owner): the service must not run as one (DESIGN §10), on its replicas either."""
        for pool in (self.pool, *self.replicas):
            async with self._connection(pool=pool) as conn:
                role, unbound = await conn.fetchrow(_ROLE_UNBOUND)
            if unbound:
                raise RoleError(
                    f"the service's database role {role!r} is not bound by row-level security (a superuser, "
                    "BYPASSRLS or the owner of the sms tables): give it a role of its own, such as sms_api "
                    "(SMS_API_DATABASE_URL, and in SMS_READ_DATABASE_URL)"
                )

    async def call(self, call: Call, *args: Any) -> Any:
        """One of the service's SQL functions (see Call): its result as JSON text, or decoded."""
        if not self.citus:
            return await self._value(call.alone, *args)
        async with self._connection() as conn:
            await conn.execute(_ACT_FOR_RELAXED if call.relaxed else _ACT_FOR, self.tenants)
            value = await conn.fetchval(call.bare, *args)
        return jsontext.encode(value).decode() if call.text and value is not None else value

    async def apply_delta(self, tenant_id: str, fsa_id: str, delta: str, meta: WriteMeta) -> str:
        """Apply a delta (JSON text); returns the result object as JSON text."""
        return await self.call(APPLY, *write_args(tenant_id, fsa_id, delta, meta))

    async def apply_deltas(
        self, tenant_id: str, fsa_id: str, writes: Sequence[tuple[str, WriteMeta]], atomic: bool = False
    ) -> list[str | Problem]:
        """Apply deltas (JSON text, each with its metadata) to one state in one transaction
        (sms.apply_deltas); returns each one's result as JSON text — exactly what `apply_delta`
        would have returned — or the Problem it met (a policy's refusal too), in order. A problem
        of the whole call (the database away, a timeout) is raised."""
        batch = b"[" + b",".join(_write_json(delta, meta) for delta, meta in writes) + b"]"
        text = await self.call(APPLY_BATCH, tenant_id, fsa_id, batch.decode(), atomic)
        return [_write_result(bytes(result)) for result in msgspec.json.decode(text, type=list[msgspec.Raw])]

    async def replace_state(self, tenant_id: str, fsa_id: str, document: str, meta: WriteMeta) -> str:
        """Replace the whole state (JSON text), logged as one delta; the result as JSON text."""
        return await self.call(REPLACE, *write_args(tenant_id, fsa_id, document, meta))

    async def rollback(self, tenant_id: str, fsa_id: str, to_version: int, meta: WriteMeta) -> str:
        """Roll the state back to an earlier version, logged as one delta (sms.rollback); JSON text."""
        return await self.call(ROLLBACK, *write_args(tenant_id, fsa_id, to_version, meta))

    async def add_comment(
        self,
        tenant_id: str,
        fsa_id: str,
        task_id: str,
        author: str,
        body: str,
        is_blocker: bool,
        lineage_id: str | None,
    ) -> str:
        """Comments on a task (sms.add_comment); in the original's shape (success, and the markdown
        also as body_md), as JSON text."""
        comment = await self.call(ADD_COMMENT, tenant_id, fsa_id, task_id, author, body, is_blocker, lineage_id)
        return jsontext.encode({"success": True, **comment, "body_md": comment["body"]}).decode()

    async def dry_run(self, tenant_id: str, fsa_id: str, delta: str, meta: WriteMeta) -> dict[str, Any]:
        """Apply a delta inside a transaction that is rolled back: exactly what would happen."""
        async with self._connection() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                current = await conn.fetchval(
                    "SELECT sms.current_version($1, $2) FROM sms.act_for($3)", tenant_id, fsa_id, self.tenants
                )
                result = await conn.fetchval(APPLY.alone, *write_args(tenant_id, fsa_id, delta, meta), self.tenants)
            finally:
                await tx.rollback()
        outcome = jsontext.decode(result)
        if meta.delta_id is None:
            outcome.pop("delta_id", None)  # a fresh id that no delta will ever carry
        return {**outcome, "current_version": current}

    async def normalize_delta(self, delta: str) -> Any:
        """The normalised ops and preconditions of a delta, checked without touching any state."""
        return await self._value("SELECT sms.normalize_delta($1::text::jsonb) FROM sms.act_for($2)", delta)

    async def read_state(
        self, tenant_id: str, fsa_id: str, unless_version: int | None = None, min_version: int | None = None
    ) -> tuple[int, str | None]:
        """(version, {"tenant_id","fsa_id","version","state"} as JSON text); the text is None when
        the state is still at `unless_version` (a conditional GET, never answered from before it)."""
        row = await self._read_query(
            "fetchrow",
            tenant_id,
            fsa_id,
            _at_least(unless_version, min_version),
            _READ_STATE,
            tenant_id,
            fsa_id,
            unless_version,
            heavy=True,
        )
        return row[0], row[1]

    async def read_slice(
        self,
        tenant_id: str,
        fsa_id: str,
        spec: str,
        k: int | None,
        order: str,
        where: str | None,
        options: str,
        min_version: int | None = None,
    ) -> dict[str, Any]:
        """A slice through the summary cache (sms.read_slice): cached with its summary body, or
        fresh with the fingerprint to store it under. One with a `where` predicate is an expensive
        read, cut off after where_timeout_ms (a 503 statement-timeout)."""
        args = (tenant_id, fsa_id, spec, k, order, where, options, self.tenants)

        async def read(conn: asyncpg.Connection, on_replica: bool) -> dict[str, Any]:
            query = _READ_SLICE_ON_REPLICA if on_replica else _READ_SLICE
            if where is None:
                return await conn.fetchval(query, *args)
            async with conn.transaction():
                await conn.execute("SELECT set_config('statement_timeout', $1, true)", str(self.where_timeout_ms))
                return await conn.fetchval(query, *args)

        answer = await self._read(read, tenant_id, fsa_id, min_version, heavy=where is not None)
        if answer["cached"] and not answer.get("counted"):
            self.slice_hits.count(tenant_id, fsa_id, answer["cache_key"])
        return answer

    async def flush_slice_hits(self) -> int:
        """Adds the slice-cache hits this process counted to the cache's rows (sms.count_slice_hits),
        one call per tenant; how many rows took hits. A tenant whose call fails (its rows locked past
        the statement timeout, say) keeps its hits for the next time, and the other tenants' are
        added all the same; then the first problem is raised. With the database away, every hit not
        added up waits for the next time at once."""
        taken = list(self.slice_hits.take().items())
        counted = 0
        failed: Problem | None = None
        for done, (tenant_id, hits) in enumerate(taken):
            try:
                fsa_ids, cache_keys = zip(*hits, strict=True)
                counted += await self.acting_for([tenant_id]).call(
                    COUNT_HITS, tenant_id, list(fsa_ids), list(cache_keys), list(hits.values())
                )
            except BaseException as error:
                # a tenant's own problem keeps its hits; anything else (the database away, a
                # cancellation) keeps every hit not added up yet and stops
                alone = isinstance(error, Problem) and error.slug != "database-unavailable"
                for waiting, its_hits in taken[done : done + 1 if alone else None]:
                    self.slice_hits.give_back(waiting, its_hits)
                if not alone:
                    raise
                failed = failed or error
        if failed is not None:
            raise failed
        return counted

    async def store_slice_summary(self, tenant_id: str, fsa_id: str, read: dict[str, Any], summary: str) -> None:
        await self.call(STORE_SUMMARY, tenant_id, fsa_id, read, summary)

    async def read_document(
        self, tenant_id: str, fsa_id: str, min_version: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(version, the whole state) from one snapshot."""
        row = await self._read_query(
            "fetchrow",
            tenant_id,
            fsa_id,
            min_version,
            "SELECT sms.current_version($1, $2), sms.document($1, $2) FROM sms.act_for($3)",
            tenant_id,
            fsa_id,
            heavy=True,
        )
        return row[0], row[1]

    async def read_feed(
        self, tenant_id: str, fsa_id: str | None, after: Position, slice_specs: Sequence[str], limit: int
    ) -> list[tuple[Change, Position, list[bool]]]:
        """The log after a position (sms.feed_after): each change, its position, and whether it
        touches each of the slice specs.

        A replica may answer: any server's answer is the next part of the one order of the log
        after `position` (a state's versions, and a tenant's feed positions, become visible in
        order on the primary and in the same order on a replica replaying its WAL). So however
        reads of lagging and current servers mix, no change is skipped or repeated: a lagging
        replica only delays."""
        rows = await self._read_query(
            "fetch",
            tenant_id,
            fsa_id,
            None,
            _READ_FEED,
            tenant_id,
            fsa_id,
            after.feed_position,
            after.version,
            list(slice_specs),
            limit,
        )
        return [
            (
                Change(tenant_id=tenant_id, **{k: v for k, v in row.items() if k not in ("wanted", "feed_position")}),
                Position(row["feed_position"], row["fsa_id"], row["version"]),
                row["wanted"],
            )
            for row in rows
        ]

    async def aliases(self, tenant_id: str, fsa_id: str) -> dict[str, str]:
        """The aliases of the state's slice specs (sms.aliases_of)."""
        return await self._value("SELECT sms.aliases_of($1, $2) FROM sms.act_for($3)", tenant_id, fsa_id)

    async def set_alias(self, tenant_id: str, fsa_id: str, alias: str, collection: str | None) -> dict[str, str]:
        """Sets (or, with no collection, removes) one of the state's own aliases; its aliases after."""
        return await self.call(SET_ALIAS, tenant_id, fsa_id, alias, collection)

    async def parse_slice(self, spec: str) -> Any:
        """The parsed parts of a slice spec; a 400 problem when it is invalid."""
        return await self._value("SELECT sms.parse_slice($1) FROM sms.act_for($2)", spec)

    async def feed_position(self, tenant_id: str, fsa_id: str, version: int) -> int | None:
        """Where a version of a state sits in its tenant's feed (sms.feed_position); None: nowhere."""
        return await self._value(
            "SELECT sms.feed_position($1, $2, $3) FROM sms.act_for($4)", tenant_id, fsa_id, version
        )

    async def current_version(self, tenant_id: str, fsa_id: str) -> int:
        """The state's version, as the primary has it."""
        return await self._value(_CURRENT_VERSION, tenant_id, fsa_id)

    async def read_state_at(self, tenant_id: str, fsa_id: str, version: int, min_version: int | None = None) -> str:
        """{"tenant_id","fsa_id","version","state"} exactly as the state was at `version`."""
        return await self._read_query(
            "fetchval",
            tenant_id,
            fsa_id,
            _at_least(version, min_version),
            _READ_STATE_AT,
            tenant_id,
            fsa_id,
            version,
            heavy=True,
        )

    async def documents_at(
        self, tenant_id: str, fsa_id: str, *versions: int, min_version: int | None = None
    ) -> list[Any]:
        """The state at each version, from one snapshot of the database."""
        return await self._read_query(
            "fetchval",
            tenant_id,
            fsa_id,
            _at_least(*versions, min_version),
            "SELECT (SELECT array_agg(sms.document_at($1, $2, v) ORDER BY o)"
            "          FROM unnest($3::bigint[]) WITH ORDINALITY u(v, o)) FROM sms.act_for($4)",
            tenant_id,
            fsa_id,
            list(versions),
            heavy=True,
        )

    async def path_changes(
        self, tenant_id: str, fsa_id: str, path: str, limit: int, min_version: int | None = None
    ) -> list[dict[str, Any]]:
        rows = await self._read_query(
            "fetch",
            tenant_id,
            fsa_id,
            min_version,
            "SELECT c.* FROM sms.act_for($5) acting,"
            " LATERAL (SELECT * FROM sms.path_changes($1, $2, $3, $4) WHERE acting OFFSET 0) c",
            tenant_id,
            fsa_id,
            path,
            limit,
            heavy=True,
        )
        return [dict(row) for row in rows]

    async def lineage(self, tenant_id: str, lineage_id: str, limit: int) -> str:
        """A lineage's deltas across the tenant's states, in time order, as JSON text."""
        return await self._value(_READ_LINEAGE, tenant_id, lineage_id, limit, heavy=True)

    async def changes_since(
        self, tenant_id: str, fsa_id: str, since: int, slice_spec: str | None, min_version: int | None = None
    ):
        """sms.changes_since and the parts of its digest (sms.digest_parts), for
        app.domain.summary.changes_digest to fit into a budget."""
        row = await self._read_query(
            "fetchrow",
            tenant_id,
            fsa_id,
            _at_least(since, min_version),
            "SELECT s.changes, sms.digest_parts($1, $2, $4, s.changes) FROM sms.act_for($5) acting,"
            " LATERAL (SELECT sms.changes_since($1, $2, $3, $4) AS changes WHERE acting OFFSET 0) s",
            tenant_id,
            fsa_id,
            since,
            slice_spec,
            heavy=True,
        )
        return row[0], row[1]

    async def comments(self, tenant_id: str, fsa_id: str, task_id: str, limit: int) -> str:
        return await self._value(_READ_COMMENTS, tenant_id, fsa_id, task_id, limit)

    async def list_states(self, tenant_id: str, prefix: str, after: str, limit: int) -> str:
        """A page of the tenant's states in id order (sms.list_states), as JSON text."""
        return await self._value(
            "SELECT sms.list_states($1, $2, $3, $4)::text FROM sms.act_for($5)", tenant_id, prefix, after, limit
        )

    async def read_deltas(
        self, tenant_id: str, fsa_id: str, since: int, limit: int, min_version: int | None = None
    ) -> str:
        """The log after version `since`, oldest first, at most `limit` entries, as JSON text."""
        return await self._read_query(
            "fetchval", tenant_id, fsa_id, _at_least(since, min_version), _READ_DELTAS, tenant_id, fsa_id, since, limit
        )

    async def check_since(self, tenant_id: str, fsa_id: str, since: int) -> None:
        """Raises the history-compacted problem when a compaction dropped the deltas after `since`."""
        await self._value("SELECT sms.check_since($1, $2, $3) FROM sms.act_for($4)", tenant_id, fsa_id, since)

    async def purge_state(self, tenant_id: str, fsa_id: str, actor: str | None, key_id: str | None) -> str:
        """Erases the state (sms.purge_state); the erasure's record as JSON text."""
        return await self.call(PURGE, tenant_id, fsa_id, actor, key_id)

    async def compact(
        self, tenant_id: str, fsa_id: str, before_version: int, actor: str | None, key_id: str | None
    ) -> str:
        """Drops the state's log and history before a snapshot at `before_version` (sms.compact);
        the erasure's record as JSON text."""
        return await self.call(COMPACT, tenant_id, fsa_id, before_version, actor, key_id)

    async def erasures(self, tenant_id: str, fsa_id: str, limit: int) -> str:
        """The state's erasure records (sms.erasures), newest first, as JSON text."""
        return await self._value(
            """SELECT json_build_object('tenant_id', $1::text, 'fsa_id', $2::text, 'erasures', (
                      SELECT coalesce(json_agg(e ORDER BY e.erased_at DESC, e.erasure_id), '[]') FROM (
                         SELECT erasure_id, tenant_id, fsa_id, action, actor, key_id, db_user, erased_at,
                                last_version, through_version, removed
                           FROM sms.erasures WHERE tenant_id = $1 AND fsa_id = $2
                          ORDER BY erased_at DESC, erasure_id LIMIT $3) e))::text
                 FROM sms.act_for($4)""",
            tenant_id,
            fsa_id,
            limit,
        )

    async def expiry(self, tenant_id: str, fsa_id: str) -> str:
        """The state's TTL (sms.expiry_of), as JSON text."""
        return await self._value("SELECT sms.expiry_of($1, $2)::text FROM sms.act_for($3)", tenant_id, fsa_id)

    async def set_expiry(self, tenant_id: str, fsa_id: str, expires_after: timedelta | None) -> str:
        """Sets (None: clears) the state's TTL (sms.set_expiry); sms.expiry_of after, as JSON text."""
        return await self.call(SET_EXPIRY, tenant_id, fsa_id, expires_after)

    async def expired_states(self, limit: int) -> list[tuple[str, str]]:
        """Up to `limit` states of any tenant past their TTL (sms.expired_states): (tenant, fsa)."""
        rows = await self._rows("SELECT e.tenant_id, e.fsa_id FROM sms.act_for($2), sms.expired_states($1) e", limit)
        return [(row["tenant_id"], row["fsa_id"]) for row in rows]

    async def expire_state(self, tenant_id: str, fsa_id: str) -> dict[str, Any] | None:
        """Purges the state if it is still past its TTL (sms.expire_state): the erasure's record,
        or None when a delta came meanwhile or it is gone."""
        return await self.call(EXPIRE, tenant_id, fsa_id)

    async def policies(self, tenant_id: str, fsa_id: str | None) -> dict[str, Any]:
        """{"rules": [...], "defaults": [...]} of a state, or {"rules"} of the tenant's defaults."""
        return await self._value("SELECT sms.policies_of($1, $2) FROM sms.act_for($3)", tenant_id, fsa_id)

    async def set_policy(self, tenant_id: str, fsa_id: str | None, rules: list[Any], actor: str | None) -> list[Any]:
        """Replaces a state's rules (fsa None: the tenant's defaults); the rules now set."""
        return await self.call(SET_POLICY, tenant_id, fsa_id, rules, actor)

    async def keys_exist(self) -> bool:
        """Whether any API key was ever made: until one is, the service is in protected mode."""
        return await self._value("SELECT sms.keys_exist() FROM sms.act_for($1)")

    async def authenticate(self, secret_hash: bytes) -> dict[str, Any] | None:
        """The key with this SHA-256, revoked and expired ones too; None when there is none."""
        return await self._value("SELECT sms.authenticate($1) FROM sms.act_for($2)", secret_hash)

    async def create_key(self, key: NewKey) -> dict[str, Any]:
        """Records a new key (its hash, never the key); the record as sms.list_keys shows keys."""
        return await self._value(
            "SELECT sms.create_key($1, $2, $3, $4, $5, $6, $7, $8, $9) FROM sms.act_for($10)",
            key.key_id,
            key.secret_hash,
            list(key.tenants),
            list(key.scopes),
            key.actor,
            key.aml_level,
            key.expires_at,
            key.rate_limit,
            key.label,
        )

    async def list_keys(self) -> list[dict[str, Any]]:
        return await self._value("SELECT sms.list_keys() FROM sms.act_for($1)")

    async def revoke_key(self, key_id: str) -> dict[str, Any]:
        return await self._value("SELECT sms.revoke_key($1) FROM sms.act_for($2)", key_id)

    async def take_tokens(self, key_id: str, rate: float, burst: float, wanted: int) -> tuple[int, float | None]:
        """Up to `wanted` tokens from the key's shared bucket: (granted, seconds until one is there)."""
        row = await self._row(
            "SELECT t.granted, t.retry_after FROM sms.act_for($5), sms.take_tokens($1, $2, $3, $4) t",
            key_id,
            rate,
            burst,
            wanted,
        )
        return row[0], row[1]


class RoleError(Exception):
    """The service's database role is not bound by row-level security."""


class SessionSettingsError(Exception):
    """Through a transaction pooler, the server's sessions do not hold the service's settings."""


# The settings Database.connect sends, as the service's SQL reads them when they are not set
# (sql/068_append_delta.sql, 056_snapshot_every.sql, 032_check_value.sql): what a session holds.
def session_settings(notify: bool, snapshot_every: int, max_depth: int, max_key_length: int) -> dict[str, str]:
    """The settings the service's SQL reads from its session (sql/068_append_delta.sql,
    056_snapshot_every.sql, 032_check_value.sql), as the service's settings make them."""
    return {
        "sms.notify": "on" if notify else "off",
        "sms.snapshot_every": str(snapshot_every),
        "sms.max_depth": str(max_depth),  # the limits sms.check_value applies
        "sms.max_key_length": str(max_key_length),
    }


# the settings the service's SQL reads from its session, in the order _SESSION_SETTINGS reads them
SESSION_SETTINGS = (
    "sms.notify",
    "sms.snapshot_every",
    "sms.max_depth",
    "sms.max_key_length",
    "citus.propagate_set_commands",
)
_SESSION_SETTINGS = """
SELECT quote_ident(current_user), quote_ident(current_database()),
       CASE WHEN current_setting('sms.notify', true) = 'off' THEN 'off' ELSE 'on' END,
       sms.snapshot_every()::text,
       sms.limit_setting('max_depth', 32)::text,
       sms.limit_setting('max_key_length', 512)::text,
       coalesce(current_setting('citus.propagate_set_commands', true), '')
"""


_ROLE_UNBOUND = """
SELECT r.rolname, r.rolsuper OR r.rolbypassrls
                  OR pg_has_role(r.oid, (SELECT relowner FROM pg_class WHERE oid = 'sms.states'::regclass), 'USAGE')
  FROM pg_roles r WHERE r.rolname = current_user
"""


def _at_least(*versions: int | None) -> int | None:
    """The newest of the versions a read names (None when it names none): a replica behind it
    must not answer."""
    named = [version for version in versions if version is not None]
    return max(named) if named else None


def _replica_failed(problem: Problem) -> bool:
    """Whether a replica's problem is the replica's (down, or cancelling its queries for recovery,
    or not yet migrated as far as the primary), so that the primary should answer instead; a
    timeout would be the primary's too."""
    return problem.status == 503 and problem.slug != "statement-timeout"


def _write_json(delta: str, meta: WriteMeta) -> bytes:
    """One write of a batch, as sms.apply_write takes it: the delta's own text and its metadata."""
    fields = {
        "actor": meta.actor,
        "lineage_id": meta.lineage_id,
        "delta_id": None if meta.delta_id is None else str(meta.delta_id),
        "expected_version": meta.expected_version,
        "meta": meta.meta,
        "trace_id": meta.trace_id,
        "parent_id": meta.parent_id,
    }
    return jsontext.encode({"delta": msgspec.Raw(delta.encode()), **{k: v for k, v in fields.items() if v is not None}})


class _Refused(msgspec.Struct):
    """What a batch result says when its write was not applied: the error it raised, or a policy's
    refusal (which sms.apply_ops returns rather than raises, so that its record commits)."""

    sqlstate: str | None = None
    message: str = ""
    detail: str | None = None
    refused: bool = False


def _write_result(result: bytes) -> str | Problem:
    """A batch result: a write's result text, or the Problem it met (as a single write meets it)."""
    refused = msgspec.json.decode(result, type=_Refused)
    if refused.refused:
        return policy_violation(msgspec.json.decode(result))
    if refused.sqlstate is None:
        return result.decode()
    problem = from_sqlstate(refused.sqlstate, refused.message, refused.detail)
    return problem or Problem(500, "internal-error", "Internal error", "an unexpected database error occurred")


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


async def _is_citus(dsn: str, connect_timeout: float) -> bool:
    """Whether `dsn` leads to a database with the citus extension (a Citus coordinator)."""
    try:
        conn = await asyncpg.connect(dsn, timeout=connect_timeout, statement_cache_size=0)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        raise database_unavailable(f"cannot connect to the database: {type(exc).__name__}: {exc}") from exc
    try:
        return await is_citus(conn)
    finally:
        await conn.close()


async def is_citus(conn: asyncpg.Connection) -> bool:
    """Whether the database has the citus extension (a Citus coordinator, when the service connects to it)."""
    return bool(await conn.fetchval("SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'citus')"))
