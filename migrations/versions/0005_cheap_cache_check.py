"""A cheap first check for cached slices: a collection's marker row carries the version of its
latest change (sms.put_entry), sms.slice_coarse reads those, and sms.read_slice serves a cached
row at once when they are unchanged, computing the fingerprint only when they moved. Also: the
pattern of alias:pattern is always a case-insensitive glob, even without wildcards.

Executes 0005_cheap_cache_check.sql, a frozen copy of what it installs; the downgrade restores
the earlier functions from 0005_cheap_cache_check_downgrade.sql.

Revision ID: 0005
Revises: 0004
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0005_cheap_cache_check.sql")
FROZEN_DOWNGRADE_SQL = Path(__file__).with_name("0005_cheap_cache_check_downgrade.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(FROZEN_DOWNGRADE_SQL.read_text())
    op.execute("DROP FUNCTION sms.slice_coarse(text, text, jsonb)")
    op.execute("ALTER TABLE sms.summary_cache DROP COLUMN coarse")
