"""Slices and the summary cache: sms.summary_cache, the folded-member index, sms.read_slice.

Executes 0002_slices.sql, a frozen copy of the sql/ files it installs.

Revision ID: 0002
Revises: 0001
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0002_slices.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    for function in (
        "store_slice_summary(text, text, jsonb, text)",
        "read_slice(text, text, text, integer, text, jsonpath, text)",
        "read_slice_parts(text, text, jsonb, integer, text, jsonpath)",
        "deep_union(jsonb, jsonb)",
        "nest(text[], jsonb)",
        "slice_fingerprint(text, text, jsonb)",
        "slice_entries(text, text, jsonb)",
        "next_prefix(text)",
        "parse_slice(text)",
    ):
        op.execute(f"DROP FUNCTION sms.{function}")
    op.execute("DROP INDEX sms.entries_folded_member")
    op.execute("DROP TABLE sms.summary_cache")
