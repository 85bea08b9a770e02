"""Nothing a client sends can break a state: sms.check_value bounds what a delta may store —
nesting (sms.max_depth), keys at every depth (sms.max_key_length), and numbers (sms.check_number:
an absolute value below 10^18, at most 18 decimal places), also for what $inc makes — and
sms.normalize_delta and sms.replace_state apply it; sms.check_id refuses invisible and
bidirectional characters, and "." and ".." as path segments. sms.check_literal goes: check_value
refuses $-keys in plain values in the same walk of the value.

Executes 0010_bounded_input.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0001 and 0003.

Revision ID: 0010
Revises: 0009
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0010_bounded_input.sql")
FROZEN_0001 = Path(__file__).with_name("0001_initial.sql")
FROZEN_0003 = Path(__file__).with_name("0003_change_feed.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())
    op.execute("DROP FUNCTION sms.check_literal(text, jsonb)")


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0001, "sql/032_check_literal.sql", "sql/030_normalize_delta.sql", "sql/041_apply_op.sql")
        + frozen_sections(FROZEN_0003, "sql/050_check_id.sql", "sql/071_replace_state.sql")
    )
    for function in ("check_value(text, jsonb, boolean)", "check_number(text, jsonb)", "limit_setting(text, integer)"):
        op.execute(f"DROP FUNCTION sms.{function}")
