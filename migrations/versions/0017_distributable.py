"""Distributable on Citus (DESIGN §14, issue 15), part one: SQL that Citus can plan and run, with the
same behaviour on one server.

- Every LANGUAGE sql function that reads a table is PL/pgSQL, whose statements Citus plans one by
  one (it cannot plan a SQL function's body with its parameters). Slices keep their plans: the
  readers scan sms.entries themselves with sms.part_covers, an inlined expression of what a slice
  part covers, so the key order still stops after k (sms.first_entries).
- No non-immutable value in an upsert's DO UPDATE SET (sms.store_slice_summary, sms.set_alias), and
  no INSERT … SELECT upsert with PL/pgSQL variables (sms.put_entry: an INSERT … VALUES per row).
- The append-only triggers pass their table's name to sms.refuse_log_change: on Citus they fire on
  shards, whose names are not the tables'.
- Comment ids count per state (sms.states.comments) instead of an identity column, whose sequence
  is one node's; each state's counter starts at its last comment id.
- sms.path_history reads the history and snapshots itself rather than call sms.value_at per delta
  (a table-reading function inside a statement that reads a table).

Executes 0017_distributable.sql, a frozen copy of what it installs; the downgrade restores the
functions and the view it replaced from the frozen copies of 0001, 0002, 0004 to 0009 and 0016.

Revision ID: 0017
Revises: 0016
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

VERSIONS = Path(__file__).parent
FROZEN_SQL = VERSIONS / "0017_distributable.sql"

# what each earlier revision's frozen copy restores: the definitions before this revision
RESTORED = {
    "0001_initial.sql": ("sql/051_collection_value.sql", "sql/054_document.sql"),
    "0002_slices.sql": ("sql/084_slice_entries.sql",),
    "0004_history.sql": (
        "sql/057_take_snapshot.sql",
        "sql/100_entry_at.sql",
        "sql/101_entries_at.sql",
        "sql/122_path_history.sql",
    ),
    "0005_cheap_cache_check.sql": ("sql/086_slice_coarse.sql",),
    "0006_member_counts.sql": (
        "sql/059_put_entry.sql",
        "sql/065_count_members.sql",
        "sql/085_slice_fingerprint.sql",
        "sql/088_read_slice.sql",
    ),
    "0007_slice_aliases.sql": ("sql/079_aliases_of.sql",),
    "0008_recent_order.sql": ("sql/087_first_entries.sql",),
    "0009_security.sql": (
        "sql/054_current_version.sql",
        "sql/097_policies_of.sql",
        "sql/111_caller_tenants.sql",
        "sql/113_authenticate.sql",
        "sql/114_list_keys.sql",
        "sql/116_keys_exist.sql",
    ),
    "0016_lifecycle.sql": (
        "sql/014_deltas_append_only.sql",
        "sql/090_store_slice_summary.sql",
        "sql/095_set_alias.sql",
        "sql/110_add_comment.sql",
    ),
}

# the triggers that call sms.refuse_log_change: (name, table, event, level)
LOG_TRIGGERS = (
    ("deltas_append_only", "deltas", "UPDATE OR DELETE", "ROW"),
    ("deltas_no_truncate", "deltas", "TRUNCATE", "STATEMENT"),
    ("entry_history_no_delete", "entry_history", "DELETE", "ROW"),
    ("entry_history_no_truncate", "entry_history", "TRUNCATE", "STATEMENT"),
    ("task_comments_append_only", "task_comments", "UPDATE OR DELETE", "ROW"),
    ("task_comments_no_truncate", "task_comments", "TRUNCATE", "STATEMENT"),
    ("policy_changes_append_only", "policy_changes", "UPDATE OR DELETE", "ROW"),
    ("policy_changes_no_truncate", "policy_changes", "TRUNCATE", "STATEMENT"),
    ("refusals_append_only", "refusals", "UPDATE OR DELETE", "ROW"),
    ("refusals_no_truncate", "refusals", "TRUNCATE", "STATEMENT"),
    ("erasures_no_truncate", "erasures", "TRUNCATE", "STATEMENT"),
)


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script("".join(frozen_sections(VERSIONS / frozen, *sources) for frozen, sources in RESTORED.items()))
    op.execute("DROP FUNCTION sms.part_covers(jsonb, text, boolean, text)")
    for name, table, event, level in LOG_TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON sms.{table}")
        op.execute(
            f"CREATE TRIGGER {name} BEFORE {event} ON sms.{table}"
            f" FOR EACH {level} EXECUTE FUNCTION sms.refuse_log_change()"
        )
    # ids from the sequence again, above every id a state's counter gave out
    op.execute("ALTER TABLE sms.task_comments ALTER COLUMN comment_id ADD GENERATED ALWAYS AS IDENTITY")
    op.execute(
        "SELECT setval(pg_get_serial_sequence('sms.task_comments', 'comment_id'), max(comment_id))"
        " FROM sms.task_comments HAVING max(comment_id) IS NOT NULL"
    )
    op.execute("ALTER TABLE sms.states DROP COLUMN comments")
