"""History, lineage and reporting: sms.entry_history (every value each entry held), snapshots
every sms.snapshot_every() versions, task comments, the lineage index, time travel
(document_at), path history, changes since a version and its digest, rollback, heartbeats, and
the reporting views delta_lineage, actor_activity and path_history. Existing states get a
baseline snapshot: their history is kept from their current version on.

Executes 0004_history.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0001 and 0003.

Revision ID: 0004
Revises: 0003
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0004_history.sql")
FROZEN_0001 = Path(__file__).with_name("0001_initial.sql")
FROZEN_0003 = Path(__file__).with_name("0003_change_feed.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    for view in ("path_history", "actor_activity", "delta_lineage"):
        op.execute(f"DROP VIEW sms.{view}")
    for function in (
        "add_comment(text, text, text, text, text, boolean, text)",
        "heartbeat(text, text, text, text, timestamptz)",
        "rollback(text, text, bigint, text, text, uuid, bigint, jsonb, text, text)",
        "changes_digest(text, text, bigint, text, integer)",
        "changes_since(text, text, bigint, text)",
        "path_changes(text, text, text, integer)",
        "value_at(text, text, text[], bigint)",
        "document_at(text, text, bigint)",
        "check_version(text, text, bigint)",
        "entries_at(text, text, bigint)",
        "entry_at(text, text, text, boolean, text, bigint)",
    ):
        op.execute(f"DROP FUNCTION sms.{function}")
    execute_script(
        frozen_sections(FROZEN_0003, "sql/059_put_entry.sql", "sql/060_write_op.sql", "sql/069_apply_ops.sql")
        + frozen_sections(FROZEN_0001, "sql/013_deltas_append_only.sql")
    )
    for function in (
        "top_counts(jsonb, integer)",
        "clip(text, integer)",
        "brief(jsonb)",
        "take_snapshot(text, text, bigint)",
        "snapshot_every()",
    ):
        op.execute(f"DROP FUNCTION sms.{function}")
    op.execute("DROP INDEX sms.deltas_by_lineage")
    for table in ("task_comments", "snapshot_entries", "snapshots", "entry_history"):
        op.execute(f"DROP TABLE sms.{table}")
    op.execute("DROP FUNCTION sms.refuse_history_rewrite()")
