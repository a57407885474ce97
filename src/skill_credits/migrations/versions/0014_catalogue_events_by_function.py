"""The catalogue's events written by the edit's function; batches with a route.

- A skill edit writes its history row, its ``skill.changed`` event and the event's
  deliveries through ``sc_skill_changed`` (``ledger/sql/events.sql``) instead of two
  triggers (on ``skill_history`` and ``skill_events``): on a Citus cluster these tables are
  copied to every node, and a trigger fires on every node's copy.
- ``sc_charge_batch``, ``sc_hold_batch`` and ``sc_capture_batch`` take a first argument,
  ``p_route`` (one of the batch's users: on Citus the node the call runs on); the old
  forms go.

The new functions come from ``ledger/sql`` when the upgrade reaches head, in the same
transaction. No downgrade (as 0012).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

# IF EXISTS: the triggers of a database at 0013 came from the present functions applied at
# its head; a replay of the history never made them.
UPGRADE = [
    "DROP TRIGGER IF EXISTS skill_history_events ON skill_history",
    "DROP TRIGGER IF EXISTS skill_events_fan_out ON skill_events",
    "DROP FUNCTION IF EXISTS skill_credits_skill_events()",
    "DROP FUNCTION IF EXISTS skill_credits_skill_fan_out()",
    "DROP FUNCTION sc_charge_batch(text[], text[], integer[], integer[], text[], text[],"
    " bytea[], text[], text[], boolean[])",
    "DROP FUNCTION sc_hold_batch(text[], text[], integer[], integer[], integer[], text[],"
    " text[], bytea[], text[])",
    "DROP FUNCTION sc_capture_batch(text[], uuid[], integer[], text[], text[], bytea[])",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("0014 does not go down, as 0012 does not (docs/database.md)")
