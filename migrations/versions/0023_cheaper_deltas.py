"""A delta costs less of the state's turn.

A state's writers take turns, so what one delta costs in the database bounds a hot state's
throughput, with group commit too. Four things every delta paid for and seldom needed:
sms.format_path was a function with an aggregate, run by the SQL-function executor on each of its
four calls per delta (now one expression the planner inlines, escaping keys only when one has a dot
or a backslash); sms.parse_path matched every path with a regular expression to split it (now
split at the dots when nothing is escaped); sms.lock_state attempted an insert of the state's row
on every write (now only when the row is not there); sms.append_delta ran the $expect check's
statement for a delta with nothing to check.

Executes 0023_cheaper_deltas.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0001, 0012 and 0018.

Revision ID: 0023
Revises: 0022
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0023_cheaper_deltas.sql")
FROZEN_0001 = Path(__file__).with_name("0001_initial.sql")
FROZEN_0012 = Path(__file__).with_name("0012_group_commit.sql")
FROZEN_0018 = Path(__file__).with_name("0018_tenant_feed.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0001, "sql/020_parse_path.sql", "sql/021_format_path.sql")
        + frozen_sections(FROZEN_0012, "sql/055_lock_state.sql")
        + frozen_sections(FROZEN_0018, "sql/068_append_delta.sql")
    )
    op.execute("DROP FUNCTION sms.format_escaped_path(text[])")
