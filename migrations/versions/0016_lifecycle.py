"""Data lifecycle (DESIGN §14): a state can be erased by an audited purge (sms.purge_state), expire
by a TTL of inactivity (sms.states.expires_after, swept by sms.expire_states) and have its log and
history compacted before a snapshot (sms.compact). Every erasure is recorded in sms.erasures, the
append-only record that the append-only logs now check before they let a row go
(sms.refuse_log_change); time travel and log readers say when what they ask for was compacted
away (sms.log_start, sms.check_version, sms.check_since).

Comments, aliases, policies and cached summaries are now written under the state's fence
(sms.state_fence), which a purge takes exclusively, so that none being written outlives a purge.

Executes 0016_lifecycle.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0004, 0005, 0007 and 0009.

Revision ID: 0016
Revises: 0015
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0016_lifecycle.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")
FROZEN_0005 = Path(__file__).with_name("0005_cheap_cache_check.sql")
FROZEN_0007 = Path(__file__).with_name("0007_slice_aliases.sql")
FROZEN_0009 = Path(__file__).with_name("0009_security.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(
            FROZEN_0004, "sql/014_deltas_append_only.sql", "sql/102_check_version.sql", "sql/110_add_comment.sql"
        )
        + frozen_sections(FROZEN_0005, "sql/090_store_slice_summary.sql")
        + frozen_sections(FROZEN_0007, "sql/095_set_alias.sql")
        + frozen_sections(FROZEN_0009, "sql/096_set_policy.sql")
    )
    for function in (
        "sms.compact(text, text, bigint, text, text)",
        "sms.set_expiry(text, text, interval)",
        "sms.expiry_of(text, text)",
        "sms.expire_states(integer)",
        "sms.purge_state(text, text, text, text)",
        "sms.erase_state(text, text, text, text)",
        "sms.check_since(text, text, bigint)",
        "sms.log_start(text, text)",
        "sms.state_fence(text, text, boolean)",
    ):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP TABLE sms.erasures")
    op.execute("DROP FUNCTION sms.refuse_erasure_change()")
    op.execute("DROP INDEX sms.states_expiring")
    op.execute("ALTER TABLE sms.states DROP COLUMN expires_after")
