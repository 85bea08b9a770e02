"""Slices in order of recent change at the cost of k, not of the matches: sms.recent_entries walks
a collection's entry history newest first (index entry_history_recent) for a whole collection or
key family, and falls back to sorting the candidates when the walk would cost more.

Executes 0008_recent_order.sql, a frozen copy of what it installs; the downgrade restores
sms.first_entries from the frozen copy of 0006.

Revision ID: 0008
Revises: 0007
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0008_recent_order.sql")
FROZEN_0006 = Path(__file__).with_name("0006_member_counts.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(frozen_sections(FROZEN_0006, "sql/087_first_entries.sql"))
    op.execute("DROP FUNCTION sms.recent_entries(text, text, jsonb, text[], jsonpath, integer)")
    op.execute("DROP INDEX sms.entry_history_recent")
