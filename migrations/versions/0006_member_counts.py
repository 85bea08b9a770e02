"""Slices whose cost does not grow with what they match: sms.member_counts keeps, per collection
and per key family (DESIGN_001 -> design_), how many members there are, their counts by status and
the latest change, kept by the merge; a whole collection or family (`task:*`, `task:DESIGN_*`) takes
its total, status counts and cache fingerprint from one row, and its first k entries by key from
the index (sms.first_entries, entries_folded_member now ending in the exact key), so an uncached
read costs ∝ k. Key order is now folded key, then exact key: the order of that index. Existing
collections are counted; cached slices are dropped (their fingerprints were made the old way).

Executes 0006_member_counts.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0002, 0004 and 0005.

Revision ID: 0006
Revises: 0005
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0006_member_counts.sql")
FROZEN_0002 = Path(__file__).with_name("0002_slices.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")
FROZEN_0005 = Path(__file__).with_name("0005_cheap_cache_check.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(
            FROZEN_0005, "sql/059_put_entry.sql", "sql/082_parse_slice.sql", "sql/085_slice_fingerprint.sql"
        )
        + frozen_sections(FROZEN_0004, "sql/060_write_op.sql")
        + frozen_sections(FROZEN_0002, "sql/088_read_slice.sql")
    )
    for function in (
        "first_entries(text, text, jsonb, text[], jsonpath, text, integer)",
        "count_members(text, text, text, bigint)",
        "tally(jsonb, text, bigint)",
        "key_family(text)",
        "entry_status(jsonb)",
    ):
        op.execute(f"DROP FUNCTION sms.{function}")
    op.execute("DROP TABLE sms.member_counts")
    # cached slices were fingerprinted the new way
    op.execute("TRUNCATE sms.summary_cache")
    op.execute("DROP INDEX sms.entries_folded_member")
    execute_script(frozen_sections(FROZEN_0002, "sql/081_entries_folded_member.sql"))
