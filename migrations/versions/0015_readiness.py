"""Readiness (DESIGN §14): sms.schema_revision tells the service's own role which revision the
database is migrated to, so that GET /health/ready answers 503 until it is the service's head.

Executes 0015_readiness.sql, a frozen copy of what it installs.

Revision ID: 0015
Revises: 0014
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0015_readiness.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.schema_revision()")
