"""Listing (DESIGN §14): sms.list_states pages through a tenant's states in id order, with each
one's version, size and times — what GET /state/{tenant} and frameworks' namespace lists read.

Executes 0013_list_states.sql, a frozen copy of what it installs.

Revision ID: 0013
Revises: 0012
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0013_list_states.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.list_states(text, text, text, integer)")
