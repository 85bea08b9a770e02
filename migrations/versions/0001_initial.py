"""The initial schema: states, entries, the append-only delta log, apply_delta and document.

Executes 0001_initial.sql, a frozen copy of sql/ as it was for this revision; later changes to
sql/ come with revisions of their own.

Revision ID: 0001
Revises:
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0001_initial.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP SCHEMA sms CASCADE")
