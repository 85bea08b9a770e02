"""The original service's clients (DESIGN §12): sms.normalize_delta expands their first-generation
nested form — operators inside plain objects, {"inventory": {"kitkats": {"$inc": 5000}}} — into
dotted paths (sms.expand_nested, sms.nested_leaves), so SQL callers get it too and the log stores
the normalised ops; sms.parse_slice refuses an empty alias (":x").

Executes 0011_original_clients.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0010 and 0007.

Revision ID: 0011
Revises: 0010
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0011_original_clients.sql")
FROZEN_0010 = Path(__file__).with_name("0010_bounded_input.sql")
FROZEN_0007 = Path(__file__).with_name("0007_slice_aliases.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    # 0007's copy of parse_slice starts by dropping the one-argument form it replaced, long gone
    parse_slice = frozen_sections(FROZEN_0007, "sql/082_parse_slice.sql").replace(
        "DROP FUNCTION sms.parse_slice(text);", ""
    )
    execute_script(frozen_sections(FROZEN_0010, "sql/030_normalize_delta.sql") + parse_slice)
    op.execute("DROP FUNCTION sms.expand_nested(jsonb)")
    op.execute("DROP FUNCTION sms.nested_leaves(text, jsonb)")
