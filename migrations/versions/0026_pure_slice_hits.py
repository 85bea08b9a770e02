"""A cached slice is a pure read.

Every slice answered from the summary cache counted its hit on the cache's row (sms.count_slice_hit):
a new row version and its WAL on each read, about a quarter of what a cached slice cost PostgreSQL.
The service now counts those hits in memory and adds them up every second or so, one statement
per tenant (sms.count_slice_hits); sms.read_slice_counted(…, count_hits => false) writes only for a
hit that had to check its row's fingerprint (a collection it covers changed), whose row must
remember the collections' versions it is now valid at, and says so ("counted"). sms.read_slice
says whether it checked the fingerprint ("revalidated"). Called as before, read_slice_counted
counts every hit as it did.

Executes 0026_pure_slice_hits.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0021 and 0022.

Revision ID: 0026
Revises: 0025
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0026_pure_slice_hits.sql")
FROZEN_0021 = Path(__file__).with_name("0021_slice_hits.sql")
FROZEN_0022 = Path(__file__).with_name("0022_one_snapshot_reads.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.read_slice_counted(text, text, text, integer, text, jsonpath, text, boolean)")
    op.execute("DROP FUNCTION sms.count_slice_hits(text, text[], text[], bigint[])")
    execute_script(
        frozen_sections(FROZEN_0021, "sql/089_read_slice_cached.sql")
        + frozen_sections(FROZEN_0022, "sql/089_read_slice_counted.sql")
    )
