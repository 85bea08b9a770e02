"""Alembic environment: one transaction per run, serialised by an advisory lock so that several
service processes starting at once migrate exactly once."""

import os

from alembic import context
from sqlalchemy import create_engine, pool, text

from app.db.migrate import sqlalchemy_url
from app.db.schema import metadata

MIGRATION_LOCK = 7_331_001  # pg_advisory_xact_lock key for migrations

config = context.config
database_url = config.attributes.get("database_url") or os.environ.get("SMS_DATABASE_URL")
if not database_url:
    raise SystemExit("set SMS_DATABASE_URL to the database to migrate (or run `sms migrate`)")


def run_offline() -> None:
    context.configure(url=sqlalchemy_url(database_url), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    engine = create_engine(sqlalchemy_url(database_url), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, transaction_per_migration=False)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
