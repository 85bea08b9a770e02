"""Group commit (DESIGN §11): sms.apply_deltas applies a batch of deltas to one state in one
transaction — each its own version, log row, checks and result, a failing one refused alone (or, in
atomic mode, the batch rolled back) — with one NOTIFY carrying the range of versions. The state's
advisory lock becomes sms.state_lock (the batch takes it once), and sms.apply_ops records refusals
through sms.record_refusal (which an atomic batch's rollback needs too).

Executes 0012_group_commit.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0003 and 0009.

Revision ID: 0012
Revises: 0011
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0012_group_commit.sql")
FROZEN_0009 = Path(__file__).with_name("0009_security.sql")
FROZEN_0003 = Path(__file__).with_name("0003_change_feed.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0003, "sql/055_lock_state.sql") + frozen_sections(FROZEN_0009, "sql/069_apply_ops.sql")
    )
    for function in (
        "sms.apply_deltas(text, text, jsonb, boolean)",
        "sms.notify_versions(text, text, bigint[])",
        "sms.apply_write(text, text, jsonb)",
        "sms.write_error(text)",
        "sms.record_refusal(text, text, jsonb, text, text, uuid, jsonb, text, text, jsonb)",
        "sms.state_lock(text, text)",
    ):
        op.execute(f"DROP FUNCTION {function}")
