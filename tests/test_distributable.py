"""The schema stays distributable by tenant (DESIGN §14, docs/scale-out.md): what Citus needs, read
from the catalog of a migrated database, so that CI keeps it on plain PostgreSQL. Citus itself
cannot run here; `sms migrate --citus` on a plain server refuses cleanly."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import asyncpg
import pytest
from helpers import ON_CITUS

from app.db import citus

# tables that hold no one tenant's data, and where they go on Citus
NOT_TENANT_TABLES = citus.REFERENCE_TABLES | citus.COORDINATOR_TABLES

# a DO UPDATE SET clause, up to the end of its statement
DO_UPDATE = re.compile(r"DO\s+UPDATE\s+SET(.*?)(;|\$\$|$)", re.IGNORECASE | re.DOTALL)
# an UPDATE's SET clause, up to its WHERE, RETURNING or the end of its statement
UPDATE_SET = re.compile(r"\bUPDATE\s+\S+(?:\s+AS)?(?:\s+\w+)?\s+SET\b(.*?)(\bWHERE\b|\bRETURNING\b|;|$)", re.I | re.S)
CHOOSING = re.compile(r"\b(coalesce|greatest|least|nullif)\s*\(|\bCASE\b", re.I)
NOT_IMMUTABLE = re.compile(
    r"\b(now|clock_timestamp|statement_timestamp|transaction_timestamp|timeofday|random|gen_random_uuid"
    r"|nextval|txid_current|pg_current_xact_id)\s*\(|\bcurrent_(timestamp|time|date)\b|\blocal(timestamp|time)\b",
    re.IGNORECASE,
)


async def tables(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'sms'::regnamespace AND relkind IN ('r', 'p')"
        " AND NOT relispartition ORDER BY 1"
    )
    return [row[0] for row in rows]


async def function_sources(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT p.oid::regprocedure::text AS name, l.lanname AS language, p.prosrc AS source"
        " FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang"
        " WHERE p.pronamespace = 'sms'::regnamespace ORDER BY 1"
    )


async def test_every_key_of_a_tenant_table_leads_with_tenant_id(conn):
    """Citus can enforce a primary key or a unique index only when it holds the distribution column;
    led by tenant_id, each is also a range of one tenant's rows."""
    keys = await conn.fetch(
        """SELECT c.relname AS table_name, i.indexrelid::regclass::text AS index_name,
                  i.indisprimary AS primary_key, a.attname AS first_column
             FROM pg_index i
             JOIN pg_class c ON c.oid = i.indrelid
             LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
            WHERE c.relnamespace = 'sms'::regnamespace AND (i.indisunique OR i.indisprimary)"""
    )
    tenant_tables = set(await tables(conn)) - NOT_TENANT_TABLES
    assert tenant_tables >= {"states", "entries", "deltas", "feed", "feed_clocks"}
    assert {k["table_name"] for k in keys if k["primary_key"]} >= tenant_tables, "every table has a primary key"
    wrong = [
        (k["table_name"], k["index_name"], k["first_column"])
        for k in keys
        if k["table_name"] in tenant_tables and k["first_column"] != "tenant_id"
    ]
    assert wrong == []


async def test_every_tenant_table_has_a_tenant_id_and_the_others_are_named(conn):
    """A table without tenant_id must be one that `sms migrate --citus` knows where to put."""
    without = await conn.fetch(
        """SELECT c.relname FROM pg_class c
            WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p')
              AND NOT EXISTS (SELECT FROM pg_attribute a
                               WHERE a.attrelid = c.oid AND a.attname = 'tenant_id' AND NOT a.attisdropped)"""
    )
    assert {row[0] for row in without} == NOT_TENANT_TABLES


async def test_no_foreign_key_crosses_tenants(conn):
    """A foreign key between distributed tables must join on the distribution column; the schema
    has none at all, and any that comes must pair tenant_id with tenant_id first."""
    fks = await conn.fetch(
        """SELECT k.conname, k.conrelid::regclass::text AS from_table, k.confrelid::regclass::text AS to_table,
                  (SELECT a.attname FROM pg_attribute a
                    WHERE a.attrelid = k.conrelid AND a.attnum = k.conkey[1]) AS from_column,
                  (SELECT a.attname FROM pg_attribute a
                    WHERE a.attrelid = k.confrelid AND a.attnum = k.confkey[1]) AS to_column
             FROM pg_constraint k
            WHERE k.contype = 'f'
              AND (k.connamespace = 'sms'::regnamespace
                   OR k.confrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'sms'::regnamespace))"""
    )
    assert [dict(fk) for fk in fks if (fk["from_column"], fk["to_column"]) != ("tenant_id", "tenant_id")] == []


async def test_no_sql_function_reads_a_table(conn):
    """Citus cannot plan a LANGUAGE sql function that reads a table with its parameters (it is inlined
    into the calling statement, which then reads a distributed table inside another's execution):
    those are PL/pgSQL, whose statements Citus plans one by one."""
    relations = await conn.fetch(
        "SELECT relname FROM pg_class WHERE relnamespace = 'sms'::regnamespace AND relkind IN ('r', 'p', 'v', 'm')"
    )
    named = re.compile(r"\bsms\.(" + "|".join(re.escape(r[0]) for r in relations) + r")\b")
    readers = [f["name"] for f in await function_sources(conn) if f["language"] == "sql" and named.search(f["source"])]
    assert readers == []


async def test_no_upsert_sets_a_value_that_is_not_immutable(conn):
    """Citus refuses now() (and any value that is not immutable) in ON CONFLICT … DO UPDATE SET: the
    value is taken into a variable first."""
    found = [
        (f["name"], clause.group(1).strip()[:120])
        for f in await function_sources(conn)
        for clause in DO_UPDATE.finditer(f["source"])
        if NOT_IMMUTABLE.search(clause.group(1))
    ]
    assert found == []


async def test_no_update_chooses_between_values_that_are_not_immutable(conn):
    """Citus refuses now() (and the like) inside coalesce, CASE, greatest, least or nullif in an
    UPDATE's SET: the value is taken into a variable first."""
    found = [
        (f["name"], clause.group(1).strip()[:120])
        for f in await function_sources(conn)
        for clause in UPDATE_SET.finditer(f["source"])
        if NOT_IMMUTABLE.search(clause.group(1)) and CHOOSING.search(clause.group(1))
    ]
    assert found == []


async def test_nothing_orders_by_one_nodes_transaction_ids_or_sequences(conn):
    """Transaction ids and sequences are one node's (and start over when a tenant moves): no column
    of a tenant table takes one as its default or identity — the feed orders by sms.feed's positions,
    comments by their state's own counter, an erasure's record is its transaction's by its own xmin,
    read on the node where it is."""
    columns = await conn.fetch(
        """SELECT c.relname, a.attname, a.attidentity <> '' AS identity, pg_get_expr(d.adbin, d.adrelid) AS default
             FROM pg_attribute a
             JOIN pg_class c ON c.oid = a.attrelid
             LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
            WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p') AND a.attnum > 0
              AND NOT a.attisdropped"""
    )
    node_local = [
        (c["relname"], c["attname"])
        for c in columns
        if c["relname"] not in NOT_TENANT_TABLES
        and (c["identity"] or re.search(r"nextval|pg_current_xact_id|txid_current", c["default"] or ""))
    ]
    assert node_local == []


@pytest.mark.skipif(ON_CITUS, reason="the test server is a Citus coordinator")
def test_sms_migrate_citus_refuses_a_server_without_citus(database_url):
    """On plain PostgreSQL the migrations do nothing Citus-specific, and asking for Citus says why."""
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate", "--citus"],
        env={**os.environ, "SMS_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "not a Citus coordinator" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("name", sorted(citus.REFERENCE_TABLES | citus.COORDINATOR_TABLES))
async def test_the_tables_named_for_citus_exist(conn, name):
    assert name in await tables(conn)
