"""Token budgets (DESIGN §13): the changes digest counts tokens with sms.estimate_tokens, a
conservative estimate, instead of characters / 4, and sms.digest_parts hands its pieces to the
service, which fits them with its configured tokenizer (SMS_TOKENIZER); sms.clip_tokens cuts a text
to a budget. Summaries cached under the old count are dropped: the service's cache key now names
the tokenizer, so they would never be read again.

Executes 0014_token_budgets.sql, a frozen copy of what it installs; the downgrade restores
sms.changes_digest from the frozen copy of 0004.

Revision ID: 0014
Revises: 0013
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0014_token_budgets.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())
    op.execute("DELETE FROM sms.summary_cache")


def downgrade() -> None:
    execute_script(frozen_sections(FROZEN_0004, "sql/107_changes_digest.sql"))
    for function in (
        "sms.digest_parts(text, text, text, jsonb)",
        "sms.clip_tokens(text, integer)",
        "sms.estimate_tokens(text)",
    ):
        op.execute(f"DROP FUNCTION {function}")
