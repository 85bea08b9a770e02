"""Migrations (DESIGN §9, STYLE habit 3): one alembic head; upgrade, downgrade and upgrade again;
a database built from sql/ and one built by the migrations have the same catalog; the SQLAlchemy
metadata matches the migrated tables; `sms migrate` upgrades a database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import psycopg
from alembic.script import ScriptDirectory
from helpers import expected_counts, run_sms
from sqlalchemy.dialects import postgresql

from app.db import migrate
from app.db.schema import metadata
from app.db.sqlfiles import current_sql

ROOT = Path(__file__).resolve().parents[1]

# Everything in schema sms that a migration could get wrong, each as sorted rows. ACLs are compared
# with NULL read as the owner's default, which is what it means (a REVOKE leaves it spelled out).
CATALOG = {
    "schemas": """
        SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace
         WHERE nspname NOT LIKE 'pg\\_%' AND nspname <> 'information_schema' ORDER BY 1""",
    "extensions": "SELECT extname, extversion FROM pg_extension ORDER BY 1",
    "relations": """
        SELECT c.relname, c.relkind::text, c.relpersistence::text, c.relrowsecurity, c.relforcerowsecurity,
               coalesce(c.relacl, acldefault('r', c.relowner))::text, c.reloptions::text
          FROM pg_class c WHERE c.relnamespace = 'sms'::regnamespace ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), co.collname, a.attidentity::text, a.attgenerated::text
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
          LEFT JOIN pg_collation co ON co.oid = a.attcollation
         WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
           AND a.attnum > 0 AND NOT a.attisdropped
         ORDER BY 1, 2""",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'sms' ORDER BY 1, 2",
    "constraints": """
        SELECT conrelid::regclass::text, conname, contype::text, condeferrable, condeferred,
               pg_get_constraintdef(oid)
          FROM pg_constraint WHERE connamespace = 'sms'::regnamespace ORDER BY 1, 2""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), pg_get_function_result(p.oid),
               p.prokind::text, coalesce(p.proacl, acldefault('f', p.proowner))::text,
               CASE WHEN p.prokind IN ('f', 'p') THEN pg_get_functiondef(p.oid) END
          FROM pg_proc p WHERE p.pronamespace = 'sms'::regnamespace ORDER BY 1, 2""",
    "triggers": """
        SELECT t.tgrelid::regclass::text, t.tgname, t.tgenabled::text, pg_get_triggerdef(t.oid)
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'sms'::regnamespace AND NOT t.tgisinternal ORDER BY 1, 2""",
    "types": """
        SELECT t.typname, t.typtype::text, format_type(t.typbasetype, t.typtypmod)
          FROM pg_type t WHERE t.typnamespace = 'sms'::regnamespace ORDER BY 1""",
    "views": "SELECT viewname, definition FROM pg_views WHERE schemaname = 'sms' ORDER BY 1",
    "policies": """
        SELECT tablename, policyname, permissive, roles::text, cmd, qual, with_check
          FROM pg_policies WHERE schemaname = 'sms' ORDER BY 1, 2""",
    "comments": """
        SELECT c.relname, d.objsubid, d.description FROM pg_description d
          JOIN pg_class c ON c.oid = d.objoid AND d.classoid = 'pg_class'::regclass
         WHERE c.relnamespace = 'sms'::regnamespace ORDER BY 1, 2""",
}


def catalog(url: str) -> dict[str, list[tuple]]:
    with psycopg.connect(url) as conn:
        return {name: [tuple(row) for row in conn.execute(query).fetchall()] for name, query in CATALOG.items()}


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrate.alembic_config("postgresql://unused"))


def head() -> str:
    (only,) = script_directory().get_heads()
    return only


def alembic_versions(url: str) -> list[str]:
    with psycopg.connect(url) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM public.alembic_version").fetchall()]


def has_sms_schema(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'sms')").fetchone()[0]


def check_works(url: str) -> None:
    """The schema serves: a delta applies, is logged, and reads back."""
    with psycopg.connect(url, autocommit=True) as conn:
        result = conn.execute("""SELECT sms.apply_delta('t', 'f', '{"a.b": {"$inc": 2}}')""").fetchone()[0]
        assert result["success"] is True and result["version"] == 1
        assert conn.execute("SELECT sms.document('t', 'f')").fetchone()[0] == {"a": {"b": 2}}
        assert conn.execute("SELECT count(*) FROM sms.deltas").fetchone()[0] == 1


def test_single_head_and_linear_history():
    scripts = script_directory()
    heads = scripts.get_heads()
    assert len(heads) == 1, heads
    assert len(scripts.get_bases()) == 1
    revisions = list(scripts.walk_revisions())  # head first; raises on a broken chain
    for newer, older in pairwise(revisions):
        assert newer.down_revision == older.revision
    assert revisions[-1].down_revision is None


def test_revisions_run_frozen_sql_not_the_current_files():
    """Migrations are history: a revision may not read sql/, which keeps changing."""
    for path in (ROOT / "migrations" / "versions").glob("*.py"):
        text = path.read_text()
        for forbidden in ("current_sql", "sqlfiles", "SQL_DIR", '"sql"', "'sql'"):
            assert forbidden not in text, f"{path.name} mentions {forbidden}"


def test_upgrade_empty_database_to_head(empty_database_url):
    assert not has_sms_schema(empty_database_url)
    migrate.upgrade(empty_database_url)
    assert alembic_versions(empty_database_url) == [head()]
    migrate.upgrade(empty_database_url)  # already at head: a no-op
    assert alembic_versions(empty_database_url) == [head()]
    check_works(empty_database_url)


def test_downgrade_to_base_and_upgrade_again(empty_database_url):
    migrate.upgrade(empty_database_url)
    check_works(empty_database_url)
    migrate.downgrade(empty_database_url, "base")
    assert not has_sms_schema(empty_database_url)
    assert alembic_versions(empty_database_url) == []
    with psycopg.connect(empty_database_url) as conn:
        leftovers = conn.execute(
            """SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'public' AND p.proname LIKE '%delta%'"""
        ).fetchall()
        assert leftovers == []
    migrate.upgrade(empty_database_url)
    assert alembic_versions(empty_database_url) == [head()]
    check_works(empty_database_url)  # a fresh schema: the old state is gone, version 1 again


def test_current_sql_and_migrations_build_the_same_catalog(database_url, empty_database_url):
    with psycopg.connect(empty_database_url) as conn:
        conn.execute(current_sql())
    from_sql, migrated = catalog(empty_database_url), catalog(database_url)
    # the comparison is about something: the core objects are there
    assert {"states", "entries", "deltas"} <= {row[0] for row in migrated["relations"]}
    assert {"apply_delta", "document", "replace_state", "ops_to_delta"} <= {row[0] for row in migrated["functions"]}
    assert migrated["triggers"]
    for name in CATALOG:
        assert from_sql[name] == migrated[name], f"{name} differ between sql/ and the migrations"


def catalog_tables(url: str) -> dict[str, dict]:
    """{table: {"columns": {name: (type, nullable, collation)}, "primary_key": [...], "unique": {...}}}"""
    with psycopg.connect(url) as conn:
        tables: dict[str, dict] = {
            name: {"columns": {}, "primary_key": [], "unique": set()}
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'sms'::regnamespace AND relkind IN ('r', 'p')"
            )
        }
        for table, column, type_, notnull, collation in conn.execute(
            """SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                      nullif(co.collname, 'default')
                 FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
                 LEFT JOIN pg_collation co ON co.oid = a.attcollation
                WHERE c.relnamespace = 'sms'::regnamespace AND c.relkind IN ('r', 'p')
                  AND a.attnum > 0 AND NOT a.attisdropped"""
        ):
            tables[table]["columns"][column] = (type_, not notnull, collation)
        for table, kind, columns in conn.execute(
            """SELECT c.relname, k.contype::text,
                      array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(attnum, n)
                              JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.attnum ORDER BY n)
                 FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
                WHERE k.connamespace = 'sms'::regnamespace AND k.contype IN ('p', 'u')"""
        ):
            if kind == "p":
                tables[table]["primary_key"] = list(columns)
            else:
                tables[table]["unique"].add(tuple(columns))
    return tables


def metadata_tables() -> dict[str, dict]:
    dialect = postgresql.dialect()
    tables: dict[str, dict] = {}
    for table in metadata.sorted_tables:
        assert table.schema == "sms"
        columns = {}
        for column in table.columns:
            type_ = column.type.compile(dialect=dialect).split(" COLLATE ")[0].lower()
            columns[column.name] = (type_, column.nullable, getattr(column.type, "collation", None))
        unique = {
            tuple(c.name for c in constraint.columns)
            for constraint in table.constraints
            if constraint.__class__.__name__ == "UniqueConstraint"
        }
        tables[table.name] = {
            "columns": columns,
            "primary_key": [c.name for c in table.primary_key.columns],
            "unique": unique,
        }
    return tables


def test_schema_metadata_matches_the_migrated_catalog(database_url):
    assert metadata_tables() == catalog_tables(database_url)


def test_sms_migrate_cli_upgrades_an_empty_database(empty_database_url):
    done = run_sms("migrate", database_url=empty_database_url)
    assert done.returncode == 0, done.stderr
    assert "migrated to head" in done.stdout
    assert alembic_versions(empty_database_url) == [head()]
    check_works(empty_database_url)
    again = run_sms("migrate", database_url=empty_database_url)
    assert again.returncode == 0, again.stderr
    assert alembic_versions(empty_database_url) == [head()]


def test_concurrent_sms_migrate_runs_migrate_once(empty_database_url):
    """Several service processes starting at once: the advisory lock lets one migrate, and the
    others find the database at head."""
    env = {**os.environ, "SMS_DATABASE_URL": empty_database_url}
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "app.cli", "migrate"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outcomes = [(p.wait(timeout=120), *p.communicate()) for p in processes]
    for code, _, stderr in outcomes:
        assert code == 0, stderr
    assert alembic_versions(empty_database_url) == [head()]
    check_works(empty_database_url)


def test_sms_migrate_cli_fails_cleanly_on_an_unknown_revision(empty_database_url):
    done = run_sms("migrate", "no-such-revision", database_url=empty_database_url)
    assert done.returncode != 0
    assert "no-such-revision" in done.stderr
    assert not has_sms_schema(empty_database_url)


def test_each_downgrade_restores_the_previous_revision_exactly(empty_database_url):
    """Stepping down one revision at a time gives, at every step, the catalog that upgrading to
    that revision gave on the way up."""
    revisions = [script.revision for script in script_directory().walk_revisions()][::-1]  # oldest first
    built_up = {}
    for revision in revisions:
        migrate.upgrade(empty_database_url, revision)
        built_up[revision] = catalog(empty_database_url)
    assert len(revisions) > 1
    for revision in reversed(revisions[:-1]):
        migrate.downgrade(empty_database_url, revision)
        stepped_down = catalog(empty_database_url)
        for name in CATALOG:
            assert stepped_down[name] == built_up[revision][name], f"{name} differ after downgrading to {revision}"


def test_upgrading_to_0006_counts_the_collections_already_stored(empty_database_url):
    """States written before sms.member_counts existed are counted by the revision that adds it,
    and the merge keeps the counts right from there on."""
    migrate.upgrade(empty_database_url, "0005")
    doc = {
        "tasks": {f"{kind}_{i}": {"status": ["OPEN", "DONE"][i % 2]} for kind in ("DESIGN", "TEST") for i in range(5)},
        "agents_online": {"DesignBot": {"status": "online"}, "human": {}},
        "cash": 10,
    }
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("SELECT sms.replace_state('t', 'f', %s::jsonb)", (json.dumps(doc),))
    migrate.upgrade(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:

        def counts() -> dict:
            rows = conn.execute("SELECT collection, family, members, statuses FROM sms.member_counts").fetchall()
            return {(c, f): (n, s) for c, f, n, s in rows if n > 0}

        assert counts() == expected_counts(doc)
        conn.execute("""SELECT sms.apply_delta('t', 'f', '{"tasks.DESIGN_0.status": "DONE", "tasks.NEW_1": {}}')""")
        doc["tasks"]["DESIGN_0"]["status"] = "DONE"
        doc["tasks"]["NEW_1"] = {}
        assert counts() == expected_counts(doc)
        read = conn.execute(
            "SELECT sms.read_slice_parts('t', 'f', sms.parse_slice('task:DESIGN_*'), 2, 'key', NULL)"
        ).fetchone()[0]
        assert read["total"] == 5 and read["parts"][0]["status_counts"] == {"DONE": 3, "OPEN": 2}


def test_recent_order_covers_entries_older_than_their_history(empty_database_url):
    """Entries written before revision 0004 kept history have none: a slice in order of recent
    change still finds them, after everything the history holds."""
    migrate.upgrade(empty_database_url, "0003")
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("""SELECT sms.replace_state('t', 'f', '{"tasks": {"A_1": {}, "A_2": {}, "A_3": {}}}')""")
        conn.execute("""SELECT sms.apply_delta('t', 'f', '{"tasks.A_2.n": 1}')""")
    migrate.upgrade(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:
        conn.execute("""SELECT sms.apply_delta('t', 'f', '{"tasks.A_3.n": 1}')""")

        def recent(spec: str, k: int) -> list[str]:
            read = conn.execute(
                "SELECT sms.read_slice_parts('t', 'f', sms.parse_slice(%s), %s, 'recent', NULL)", (spec, k)
            ).fetchone()[0]
            return read["parts"][0]["members"]

        for spec in ("task:*", "task:a_*"):
            assert recent(spec, 1) == ["A_3"]  # found in the history
            assert recent(spec, 3) == ["A_3", "A_2", "A_1"]  # A_2 and A_1 predate it


def test_downgrading_0029_puts_each_states_comment_counter_back(empty_database_url):
    """0029 counts comment ids from the comments themselves; its downgrade puts the header row's
    counter back at each state's last id, so that comments before and after either way never
    share an id."""
    migrate.upgrade(empty_database_url)
    with psycopg.connect(empty_database_url, autocommit=True) as conn:

        def comment(fsa: str) -> int:
            made = conn.execute("SELECT sms.add_comment('t', %s, 'T1', 'ann', 'hi')", (fsa,)).fetchone()[0]
            return made["comment_id"]

        for fsa in ("f", "g"):
            conn.execute("""SELECT sms.apply_delta('t', %s, '{"tasks.T1.status": "OPEN"}')""", (fsa,))
        assert [comment("f"), comment("f"), comment("f"), comment("g")] == [1, 2, 3, 1]
        migrate.downgrade(empty_database_url, "0028")
        counters = conn.execute("SELECT fsa_id, comments FROM sms.states ORDER BY fsa_id").fetchall()
        assert counters == [("f", 3), ("g", 1)]
        assert comment("f") == 4
        migrate.upgrade(empty_database_url)
        assert [comment("f"), comment("g")] == [5, 2]
