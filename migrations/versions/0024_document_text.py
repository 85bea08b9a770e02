"""A full read assembles the state's JSON as text.

GET /state built the whole state as one jsonb value (jsonb_object_agg, which sorts and
de-duplicates every object's keys) only to print it again: at 1 MB that was most of the read.
sms.document_text assembles the text from the entries' values, which are JSON already, in byte
order of the keys (the same version is always the same text); sms.document parses that text,
half the time of building the value. The same for a read of a past version
(sms.document_at_text, sms.document_at).

Executes 0024_document_text.sql, a frozen copy of what it installs; the downgrade restores
sms.document and sms.document_at from the frozen copies of 0017 and 0004.

Revision ID: 0024
Revises: 0023
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0024_document_text.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")
FROZEN_0017 = Path(__file__).with_name("0017_distributable.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0017, "sql/054_document.sql") + frozen_sections(FROZEN_0004, "sql/103_document_at.sql")
    )
    op.execute("DROP FUNCTION sms.document_text(text, text)")
    op.execute("DROP FUNCTION sms.document_at_text(text, text, bigint)")
