"""The change feed: deltas.tx_id and its index, sms.feed_after, sms.touches_slice, and
sms.lock_state, which apply_delta and replace_state now take first so that a state's writers get
their transaction ids in version order. Also: tenant and fsa ids may not hold "/", a retried
replace_state is answered as a duplicate, content_bytes counts JSON text, and sms.apply_ops (the
normalised-ops engine under apply_delta) lets replace_state and log replays take any key.

Executes 0003_change_feed.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from 0001's frozen copy.

Revision ID: 0003
Revises: 0002
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0003_change_feed.sql")
FROZEN_0001 = Path(__file__).with_name("0001_initial.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(
            FROZEN_0001,
            "sql/050_check_id.sql",
            "sql/059_put_entry.sql",
            "sql/060_write_op.sql",
            "sql/070_apply_delta.sql",
            "sql/071_replace_state.sql",
        )
    )
    op.execute("DROP FUNCTION sms.apply_ops(text, text, jsonb, jsonb, text, text, uuid, bigint, jsonb, text, text)")
    op.execute("DROP FUNCTION sms.lock_state(text, text)")
    op.execute("DROP FUNCTION sms.touches_slice(jsonb, jsonb)")
    op.execute("DROP FUNCTION sms.feed_after(text, text, xid8, text, bigint, integer)")
    op.execute("DROP INDEX sms.deltas_by_tenant_tx")
    op.execute("ALTER TABLE sms.deltas DROP COLUMN tx_id")
