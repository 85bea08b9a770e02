"""Comments take their ids off the state's header row, so that they stop holding up its deltas.

sms.add_comment counted a state's comment ids on its header row (sms.states.comments): each comment
updated the row that every write of the state's deltas updates too, so a comment waited for the
batch in flight to commit, and the next batch for the comment's own commit. 64 writers on one state
made ~3,300 deltas/s alone and ~1,150/s beside 16 agents commenting (~430 comments/s). A comment's id
is now one more than the state's last comment's (task_comments is append-only: no id is given
twice), read under an advisory lock of the state's comments alone, through a new index of a state's
comments by id; the column goes. The same load: ~1,600–2,000 deltas/s and ~740–840 comments/s.

Executes 0029_comments_off_the_state_row.sql, a frozen copy of what it installs; the downgrade
runs again what the frozen copy of 0017 did to make the counter (the column, each state's at its
last comment id) and restores sms.add_comment from it.

Revision ID: 0029
Revises: 0028
"""

from pathlib import Path

from alembic import op

from app.db.migrate import execute_script, frozen_sections

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None

FROZEN_SQL = Path(__file__).with_name("0029_comments_off_the_state_row.sql")
FROZEN_0017 = Path(__file__).with_name("0017_distributable.sql")


def upgrade() -> None:
    execute_script(FROZEN_SQL.read_text())


def downgrade() -> None:
    # what 0017 did when it made the counter: the column, at each state's last comment id
    execute_script(
        frozen_sections(
            FROZEN_0017,
            "states.comments (sql/010_states.sql)",
            "each state's comment counter starts at its last comment id",
            "sql/110_add_comment.sql",
        )
    )
    op.execute("DROP INDEX sms.task_comments_by_id")
