"""A batched delta costs less of the state's turn.

Group commit applies a hot state's deltas one after another under its lock, so what each costs in
the database bounds the state's throughput. Three things each write of a batch paid for:
sms.lock_state locked the state's header row as well as taking the advisory lock that already
serialises its writers, and each write of a batch, in a subtransaction of its own, locking the row
again made a MultiXact (one per delta: a hot state used up MultiXact ids as fast as versions, and
the lookups of their members cost time); sms.append_delta and sms.write_op called sms.write_op and
sms.put_entry as queries (a function scan each) where an expression does; and sms.write_op's read
of the collection's row was planned afresh on every call. Also, sms.expand_nested decides in one
statement that a delta has nothing nested, rather than looking at each key in turn, and
sms.normalize_delta looks for overlapping paths only when two share their first key.

Executes 0025_cheaper_batches.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0006, 0011 and 0023.

Revision ID: 0025
Revises: 0024
"""

from pathlib import Path

from app.db.migrate import execute_script, frozen_sections

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0025_cheaper_batches.sql")
FROZEN_0006 = Path(__file__).with_name("0006_member_counts.sql")
FROZEN_0011 = Path(__file__).with_name("0011_original_clients.sql")
FROZEN_0023 = Path(__file__).with_name("0023_cheaper_deltas.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0011, "sql/029_expand_nested.sql", "sql/030_normalize_delta.sql")
        + frozen_sections(FROZEN_0006, "sql/060_write_op.sql")
        + frozen_sections(FROZEN_0023, "sql/055_lock_state.sql", "sql/068_append_delta.sql")
    )
