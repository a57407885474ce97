"""The events feed in time order: indexes on (created_at, seq).

``GET /v1/events`` lists events newest first by the instant they were written, ties by
``seq``. ``seq`` alone orders them on one server, but on a Citus cluster every node hands
out its own range of the sequence, so the feed ordered by ``seq`` was newest first within
a node only. The instant orders them across nodes; ``seq`` (unique on every node) breaks
ties, so a page's cursor names one place in one order.

Built in the upgrade's transaction: it holds writes to the events while it reads them.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07
"""

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

UPGRADE = [
    "DROP INDEX events_seq",
    "DROP INDEX events_user_seq",
    "DROP INDEX skill_events_seq",
    "CREATE INDEX events_time ON events (created_at, seq)",
    "CREATE INDEX events_user_time ON events (user_id, created_at, seq)",
    "CREATE INDEX skill_events_time ON skill_events (created_at, seq)",
]

DOWNGRADE = [
    "DROP INDEX skill_events_time",
    "DROP INDEX events_user_time",
    "DROP INDEX events_time",
    "CREATE INDEX skill_events_seq ON skill_events (seq DESC)",
    "CREATE INDEX events_user_seq ON events (user_id, seq DESC)",
    "CREATE INDEX events_seq ON events (seq DESC)",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
