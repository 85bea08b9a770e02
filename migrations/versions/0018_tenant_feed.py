"""The tenant's change feed ordered by the tenant's own rows (DESIGN §7, §14): every transaction
that applies deltas to a state gets a row in sms.feed (sms.publish) and, when it commits, the
tenant's next position (sms.place_in_feed, a deferred trigger holding the tenant's row of
sms.feed_clocks for the rest of the commit); sms.feed_after reads a tenant in that order. It
replaces the order of transaction ids below the oldest running one (sms.deltas.tx_id,
pg_snapshot_xmin), which holds on one server only: on a cluster sharded by tenant each node counts
its own transactions, and a tenant moved to another node starts over.

The deltas already logged take their places in the order the old feed read them. The downgrade
gives them back transaction ids in that same order (their positions), so a subscriber's place
survives both ways.

Executes 0018_tenant_feed.sql, a frozen copy of what it installs; the downgrade restores the
functions it replaced from the frozen copies of 0003, 0009, 0012 and 0016.

Revision ID: 0018
Revises: 0017
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0018_tenant_feed.sql")
FROZEN_0003 = Path(__file__).with_name("0003_change_feed.sql")
FROZEN_0009 = Path(__file__).with_name("0009_security.sql")
FROZEN_0012 = Path(__file__).with_name("0012_group_commit.sql")
FROZEN_0016 = Path(__file__).with_name("0016_lifecycle.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    # the log is append-only (sms.refuse_log_change): its triggers stand aside while the column
    # the old feed read is filled in, in the order of the feed
    op.execute("ALTER TABLE sms.deltas ADD COLUMN tx_id xid8")
    op.execute("ALTER TABLE sms.deltas DISABLE TRIGGER deltas_append_only")
    op.execute(
        "UPDATE sms.deltas d SET tx_id = f.position::text::xid8 FROM sms.feed f"
        " WHERE f.tenant_id = d.tenant_id AND f.fsa_id = d.fsa_id"
        " AND d.version BETWEEN f.from_version AND f.to_version"
    )
    op.execute("UPDATE sms.deltas SET tx_id = '0' WHERE tx_id IS NULL")
    op.execute("ALTER TABLE sms.deltas ENABLE TRIGGER deltas_append_only")
    op.execute("ALTER TABLE sms.deltas ALTER COLUMN tx_id SET DEFAULT pg_current_xact_id()")
    op.execute("ALTER TABLE sms.deltas ALTER COLUMN tx_id SET NOT NULL")
    op.execute("CREATE INDEX deltas_by_tenant_tx ON sms.deltas (tenant_id, tx_id, fsa_id, version)")
    op.execute("DROP FUNCTION sms.feed_after(text, text, bigint, bigint, integer)")
    op.execute("DROP FUNCTION sms.feed_position(text, text, bigint)")
    execute_script(
        frozen_sections(FROZEN_0003, "sql/091_feed_after.sql")
        + frozen_sections(FROZEN_0009, "sql/068_append_delta.sql")
        + frozen_sections(FROZEN_0012, "sql/072_apply_deltas.sql")
        + frozen_sections(FROZEN_0016, "sql/136_compact.sql")
    )
    op.execute("DROP FUNCTION sms.publish(text, text, bigint, bigint, jsonb)")
    op.execute("DROP TABLE sms.feed")
    op.execute("DROP FUNCTION sms.place_in_feed()")
    op.execute("DROP TABLE sms.feed_clocks")
