"""Erasures that hold on Citus as on one server (docs/scale-out.md).

The append-only logs let a row go only in a transaction that recorded its state's erasure in
sms.erasures: the record is now that transaction's own row, known by its xmin on the node where the
trigger fires (sms.written_by_this_transaction), no longer by a transaction id it was given at
insert (sms.erasures.tx_id, dropped): on Citus the coordinator gave it, whose transaction ids are
not the worker's, and a purge run from the coordinator statement by statement was refused. Such a
purge would still take the state's lock and fence (advisory locks) on the coordinator, where the
state's writers never do: an erasure now runs only on the node that holds the tenant's rows
(sms.check_tenant_here), and says how to get there otherwise (a bare call, which Citus delegates).

The TTL sweep expires each state by a call of its own (sms.expire_state), which Citus delegates to
the tenant's node, after listing the expired states of every tenant (sms.expired_states);
sms.expire_states does both in one transaction, on one server.

Drops the column, then executes 0020_node_local_erasures.sql, a frozen copy of what it installs;
the downgrade restores the functions it replaced from the frozen copies of 0016, 0017, 0018 and
0019, and the column with its default.

Revision ID: 0020
Revises: 0019
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0020_node_local_erasures.sql")
FROZEN_0016 = Path(__file__).with_name("0016_lifecycle.sql")
FROZEN_0017 = Path(__file__).with_name("0017_distributable.sql")
FROZEN_0018 = Path(__file__).with_name("0018_tenant_feed.sql")
FROZEN_0019 = Path(__file__).with_name("0019_citus.sql")


def upgrade() -> None:
    # For a database that Citus distributed already (elsewhere the setting is an unused placeholder):
    # Citus passes the ALTER TABLE on to the shards as the text it came in, which the workers refuse
    # when it is a script of several statements, so it is a statement of its own; and it runs over
    # one connection per node, which Citus then sends the functions' definitions over.
    op.execute("SET LOCAL citus.multi_shard_modify_mode = 'sequential'")
    op.execute("ALTER TABLE sms.erasures DROP COLUMN tx_id")
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    # the records written since get the downgrade's transaction id: none of them opens a log after it
    op.execute("ALTER TABLE sms.erasures ADD COLUMN tx_id xid8 NOT NULL DEFAULT pg_current_xact_id()")
    execute_script(
        frozen_sections(
            FROZEN_0016, "sql/027_erasures_append_only.sql", "sql/132_purge_state.sql", "sql/133_expire_states.sql"
        )
        + frozen_sections(FROZEN_0017, "sql/014_deltas_append_only.sql")
        + frozen_sections(FROZEN_0018, "sql/136_compact.sql")
        + frozen_sections(FROZEN_0019, "sql/131_erase_state.sql")
    )
    for function in (
        "sms.expire_state(text, text)",
        "sms.expired_states(integer)",
        "sms.check_tenant_here(text)",
        "sms.written_by_this_transaction(xid)",
    ):
        op.execute(f"DROP FUNCTION {function}")
