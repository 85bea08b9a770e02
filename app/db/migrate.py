"""Alembic, run from Python: what `sms migrate` and `sms serve` do at start."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from alembic import command, op
from alembic.config import Config
from alembic.script import ScriptDirectory


def alembic_config(database_url: str) -> Config:
    """The migrations as the package ships them (app._migrations: migrations/, mapped by
    pyproject.toml), the same in a checkout, an editable install and a wheel. No alembic.ini is
    read: that file serves the `alembic` command in a checkout."""
    config = Config()
    # alembic imports the revisions from files: the package is installed as a directory (pip does)
    config.set_main_option("script_location", str(files("app._migrations")))
    # passed as an attribute, not an option: URLs may hold % which ini interpolation would eat
    config.attributes["database_url"] = database_url
    return config


def revisions() -> tuple[str, frozenset[str]]:
    """The head revision the package ships, and every revision it knows."""
    script = ScriptDirectory.from_config(alembic_config(""))
    return script.get_current_head(), frozenset(revision.revision for revision in script.walk_revisions())


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    command.downgrade(alembic_config(database_url), revision)


def sqlalchemy_url(database_url: str) -> str:
    """The psycopg (v3) dialect URL that alembic's engine needs, from a libpq-style URL."""
    for prefix in ("postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix) :]
    return database_url


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script from a revision as it is, through the driver's own
    connection: neither SQLAlchemy nor psycopg parses it for bind parameters when none are passed."""
    if op.get_context().as_sql:
        op.execute(sql)
    else:
        op.get_bind().connection.driver_connection.execute(sql)


def frozen_sections(frozen_sql: Path, *sources: str) -> str:
    """The parts of a revision's frozen SQL that came from the given sql/ files (each part starts
    with a "-- ===== sql/…" line), without their triggers: what a downgrade re-runs to restore
    that revision's functions."""
    parts = {part.split("\n", 1)[0].strip(): part for part in frozen_sql.read_text().split("-- ===== ")}
    missing = [source for source in sources if source not in parts]
    if missing:
        raise LookupError(f"{frozen_sql.name} holds no {', '.join(missing)}")
    return "\n".join("-- ===== " + parts[source].split("\nCREATE TRIGGER", 1)[0] for source in sources)
