"""A cached slice is found without parsing its spec.

The summary cache's key was the request with the collections its specs read, so every read parsed
the spec (and read the state's aliases) before it could look up its row. Now the key is the
request with the state's own aliases as they stand (what decides which collections the specs
read), and the row names its collections: a hit is a lookup of the row, of the state's version and
of one marker row per collection (sms.slice_coarse, which now takes the collections' names). Rows
keyed the old way would never be found again: the cache is emptied (it only ever holds what can be
read afresh).

Executes 0021_slice_hits.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0007 and 0017.

Revision ID: 0021
Revises: 0020
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0021_slice_hits.sql")
FROZEN_0007 = Path(__file__).with_name("0007_slice_aliases.sql")
FROZEN_0017 = Path(__file__).with_name("0017_distributable.sql")


def upgrade() -> None:
    op.execute("DROP FUNCTION sms.slice_coarse(text, text, jsonb)")  # its argument is renamed
    execute_script(FROZEN_SQL.read_text())
    op.execute("DELETE FROM sms.summary_cache")


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.slice_coarse(text, text, jsonb)")
    execute_script(
        frozen_sections(FROZEN_0017, "sql/086_slice_coarse.sql")
        + frozen_sections(FROZEN_0007, "sql/089_read_slice_cached.sql")
    )
    op.execute("DELETE FROM sms.summary_cache")
