"""A read sees one moment on Citus too.

On Citus the service's reads call the SQL functions from the coordinator, which sends each
statement they run to the tenant's node, where each took a snapshot of its own: under writers a
slice could name one version and hold another's entries. The service now reads in a transaction of
one snapshot there (repeatable read), in which a cache hit whose row another reader bumped since
cannot be counted: sms.read_slice_counted leaves such a hit uncounted (sms.count_slice_hit, in a
subtransaction only then) instead of failing the read. On one server nothing changes.

Executes 0022_one_snapshot_reads.sql, a frozen copy of what it installs; the downgrade restores
the function it replaced from the frozen copy of 0019.

Revision ID: 0022
Revises: 0021
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0022_one_snapshot_reads.sql")
FROZEN_0019 = Path(__file__).with_name("0019_citus.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(frozen_sections(FROZEN_0019, "sql/089_read_slice_counted.sql"))
    op.execute("DROP FUNCTION sms.count_slice_hit(text, text, jsonb)")
