"""What the service needs to run on Citus as on one server (docs/scale-out.md).

The tenants a transaction acts for are set by SET LOCAL (sms.act_for): the same on one server,
and on Citus the command that citus.propagate_set_commands = 'local' carries to the workers a
transaction reaches, where row-level security reads them too. A slice read that counts its cache
hit (sms.read_slice_counted) and a page of the log (sms.read_deltas) are functions, so that the
statements that call them read no table themselves: Citus runs such a statement on the tenant's
node whole, where a function cannot read the tables in turn.

The same holds inside sms.changes_since and sms.path_changes: the rows they read come first, the
values at those versions in a statement of their own; and a new API key's tenants and scopes are
worked out before the INSERT, which Citus takes with plain values only, and a revocation's time
before the UPDATE, where Citus refuses now() inside coalesce. A snapshot and a collection's member
counts are written row by row: Citus delegates a write to the tenant's node only when each of its
statements names the tenant, which an INSERT ... SELECT between two tables does not. And a purge
(sms.erase_state), which finds the tables to erase in the catalog, passes over the shards a Citus
node keeps beside them.

Executes 0019_citus.sql, a frozen copy of what it installs; the downgrade restores the functions
it replaced from the frozen copies of 0004, 0007, 0009, 0016 and 0017.

Revision ID: 0019
Revises: 0018
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0019_citus.sql")
FROZEN_0004 = Path(__file__).with_name("0004_history.sql")
FROZEN_0007 = Path(__file__).with_name("0007_slice_aliases.sql")
FROZEN_0009 = Path(__file__).with_name("0009_security.sql")
FROZEN_0016 = Path(__file__).with_name("0016_lifecycle.sql")
FROZEN_0017 = Path(__file__).with_name("0017_distributable.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    execute_script(
        frozen_sections(FROZEN_0009, "sql/004_act_for.sql", "sql/112_create_key.sql", "sql/115_revoke_key.sql")
        + frozen_sections(FROZEN_0004, "sql/105_path_changes.sql")
        + frozen_sections(FROZEN_0007, "sql/106_changes_since.sql")
        + frozen_sections(FROZEN_0016, "sql/131_erase_state.sql")
        + frozen_sections(FROZEN_0017, "sql/057_take_snapshot.sql", "sql/065_count_members.sql")
    )
    op.execute("DROP FUNCTION sms.read_deltas(text, text, bigint, integer)")
    op.execute("DROP FUNCTION sms.read_slice_counted(text, text, text, integer, text, jsonpath, text)")
