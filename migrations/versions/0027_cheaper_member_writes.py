"""A member's write costs less, a batch moves a collection's marker row once, and a delta's checks
look at its values fewer times.

sms.put_entry wrote the collection's counts (sms.member_counts) and the entry's history row with
INSERT … ON CONFLICT: a speculative insertion, a conflict check and, for the counts, nearly always
an update after it. Its caller holds the state's lock, so nobody else writes those rows meanwhile:
the counts are now updated where their row exists and inserted where not, and the history row is
inserted plainly unless the same version wrote the entry already (two ops of one delta on one
member), which sms.put_entry now knows from the old value's version (sms.write_op reads it with
the value).

And every member's change set its collection's marker row (what a cached slice compares first) to
its version: in a batch, each write made a new row version of the same row. What the marker's
readers, in other transactions, need is that it moves with every transaction that changes a
member; sms.write_op now moves it once an op, only when it is older than the delta, or, in a batch
(the setting sms.batch now holds the batch's first version), older than the batch.

sms.normalize_delta looked at an object value's keys in three queries (any not starting with $? how
many? the one operator) where one does; sms.check_value read its limits before finding a scalar,
and now leaves a string, boolean or null at once, as sms.check_number does; and
sms.expand_nested tells a delta with no plain object among its values by an expression. And
sms.append_delta made the log's paths and collections in a query of their own, where
sms.format_path is not inlined; sms.write_op, which has both at hand, now returns them, and names
the one member most ops write without a query.

callgrind of a single-user PostgreSQL 18 on copies of one data directory, the service's session
settings, per delta, before → after: the seed bench's delta on a 100 KB state, batched 3.37 M →
2.52 M instructions (−25 %), alone 4.24 M → 3.70 M (−13 %); the throughput bench's hot delta,
batched 2.57 M → 1.92 M (−25 %), alone 3.62 M → 3.27 M (−10 %).

Executes 0027_cheaper_member_writes.sql, a frozen copy of what it installs; the downgrade restores
the functions it replaced from the frozen copies of 0010, 0017, 0018 and 0025.

Revision ID: 0027
Revises: 0026
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0027_cheaper_member_writes.sql")
FROZEN_0010 = Path(__file__).with_name("0010_bounded_input.sql")
FROZEN_0017 = Path(__file__).with_name("0017_distributable.sql")
FROZEN_0018 = Path(__file__).with_name("0018_tenant_feed.sql")
FROZEN_0025 = Path(__file__).with_name("0025_cheaper_batches.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.put_entry(text, text, text, boolean, text, jsonb, bigint, jsonb, bigint)")
    op.execute("DROP FUNCTION sms.write_op(text, text, bigint, jsonb)")
    execute_script(
        frozen_sections(FROZEN_0010, "sql/031_check_number.sql", "sql/032_check_value.sql")
        + frozen_sections(FROZEN_0017, "sql/059_put_entry.sql")
        + frozen_sections(
            FROZEN_0025,
            "sql/029_expand_nested.sql",
            "sql/030_normalize_delta.sql",
            "sql/060_write_op.sql",
            "sql/068_append_delta.sql",
        )
        + frozen_sections(FROZEN_0018, "sql/072_apply_deltas.sql")
    )
