"""A cheap first check for cached slices: a collection's marker row carries the version of its
latest change (sms.put_entry), sms.slice_coarse reads those, and sms.read_slice serves a cached
row at once when they are unchanged, computing the fingerprint only when they moved. Also: the
pattern of alias:pattern is always a case-insensitive glob, even without wildcards.

Executes 0005_cheap_cache_check.sql, a frozen copy of what it installs; the downgrade restores
the functions it replaced from the frozen copies of 0002 and 0004.

Revision ID: 0005
Revises: 0004
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0005_cheap_cache_check.sql")
FROZEN_0002 = Path(__file__).with_name("0002_slices.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0004, "sql/059_put_entry.sql")
        + frozen_sections(
            FROZEN_0002,
            "sql/082_parse_slice.sql",
            "sql/085_slice_fingerprint.sql",
            "sql/089_read_slice_cached.sql",
            "sql/090_store_slice_summary.sql",
        )
    )
    op.execute("DROP FUNCTION sms.slice_coarse(text, text, jsonb)")
    op.execute("ALTER TABLE sms.summary_cache DROP COLUMN coarse")
