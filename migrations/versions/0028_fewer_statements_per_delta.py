"""A delta runs fewer statements: what needs no look is told by expressions the planner inlines.

Every statement a PL/pgSQL function runs (a PERFORM, a query) and every call of an SQL function the
planner does not inline starts an executor of its own: on the write path, more than the work most of
them do. Six kinds of them went:

* sms.check_value and sms.check_number were PERFORMed for every value and operand of a delta, and
  after every $inc, to learn that a string, a boolean, null or a number in range holds nothing to
  check. sms.needs_check (an SQL function, inlined) tells those by an expression; the statements
  run only for objects, arrays and numbers out of range, where they raise as before.
* sms.apply_ops PERFORMed sms.check_id six times per delta; sms.id_ok says the same as an inlined
  expression, and sms.check_id runs (and raises, naming the first bad id) only when one fails.
* sms.format_path and sms.tally were declared IMMUTABLE but call STABLE functions (array_to_string,
  to_jsonb), so the planner never inlined them (a body may not be more volatile than its
  function): each call ran as a statement of its own. They are STABLE now, and inlined.
* sms.write_op read its op's keys with a query of its own; sms.append_delta's loop over the ops, a
  query already, now hands them over.
* sms.apply_ops called sms.policy_targets (a function with settings of its own) for every delta,
  to learn from two probes that the state and its tenant have no rule; it now probes once itself
  and calls the search only when there are rules.
* Each write of a batch took the state's lock again and read its version from the header row;
  sms.apply_deltas, which holds the lock for the whole batch, now keeps the version in a setting
  (sms.batch_at) that each write moves on, and that a failing write's subtransaction takes back.

callgrind of a single-user PostgreSQL 18 on copies of one data directory, per delta, before →
after: the throughput bench's hot delta, batched 1.70 M → 1.46 M instructions (−14 %), alone
2.58 M → 2.44 M (−5 %); the seed bench's delta with an actor and a delta_id, batched 2.47 M →
2.23 M (−10 %).

Executes 0028_fewer_statements_per_delta.sql, a frozen copy of what it installs; the downgrade
restores the functions it replaced from the frozen copies of 0006, 0009, 0010, 0012, 0023 and 0027.

Revision ID: 0028
Revises: 0027
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0028_fewer_statements_per_delta.sql")
FROZEN_0006 = Path(__file__).with_name("0006_member_counts.sql")
FROZEN_0009 = Path(__file__).with_name("0009_security.sql")
FROZEN_0010 = Path(__file__).with_name("0010_bounded_input.sql")
FROZEN_0012 = Path(__file__).with_name("0012_group_commit.sql")
FROZEN_0023 = Path(__file__).with_name("0023_cheaper_deltas.sql")
FROZEN_0027 = Path(__file__).with_name("0027_cheaper_member_writes.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    op.execute("DROP FUNCTION sms.write_op(text, text, bigint, jsonb, text[])")
    execute_script(
        frozen_sections(FROZEN_0023, "sql/021_format_path.sql")
        + frozen_sections(
            FROZEN_0027,
            "sql/030_normalize_delta.sql",
            "sql/031_check_number.sql",
            "sql/032_check_value.sql",
            "sql/060_write_op.sql",
            "sql/068_append_delta.sql",
            "sql/072_apply_deltas.sql",
        )
        + frozen_sections(FROZEN_0010, "sql/041_apply_op.sql", "sql/050_check_id.sql")
        + frozen_sections(FROZEN_0006, "sql/063_tally.sql")
        + frozen_sections(FROZEN_0009, "sql/066_policy_targets.sql")
        + frozen_sections(FROZEN_0012, "sql/069_apply_ops.sql")
    )
    # what the functions restored above no longer call
    op.execute("DROP FUNCTION sms.needs_check(jsonb)")
    op.execute("DROP FUNCTION sms.id_ok(text, text)")
