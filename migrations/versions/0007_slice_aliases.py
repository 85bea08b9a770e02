"""Aliases configurable per state (DESIGN §5): sms.slice_aliases holds a state's own aliases of
slice specs (`todo:*` reading `tasks`), set with sms.set_alias, beside or over the defaults of
sms.default_aliases; sms.parse_slice takes the aliases to use (sms.aliases_of), and the slice
reads, the summary cache key, the change digest and the feed's slice filter parse with the
state's own.

Executes 0007_slice_aliases.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0004, 0005 and 0006.

Revision ID: 0007
Revises: 0006
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0007_slice_aliases.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")
FROZEN_0005 = Path(__file__).with_name("0005_cheap_cache_check.sql")
FROZEN_0006 = Path(__file__).with_name("0006_member_counts.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.parse_slice(text, jsonb)")
    execute_script(
        frozen_sections(FROZEN_0006, "sql/082_parse_slice.sql")
        + frozen_sections(FROZEN_0005, "sql/089_read_slice_cached.sql")
        + frozen_sections(FROZEN_0004, "sql/106_changes_since.sql")
    )
    for function in ("set_alias(text, text, text, text)", "aliases_of(text, text)", "default_aliases()"):
        op.execute(f"DROP FUNCTION sms.{function}")
    op.execute("DROP TABLE sms.slice_aliases")
