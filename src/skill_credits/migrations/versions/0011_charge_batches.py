"""Charges, holds and captures in batches: ``sc_charge_batch``, ``sc_hold_batch`` and
``sc_capture_batch`` each run many writes in one call and one commit.

``skill_credits/migrations/sql/ledger_v6.sql`` (see the header there) adds the functions; the
tables and every other function stay as they are. Downgrade drops them.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from alembic import op

from skill_credits.migrations.sql import statements

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in statements("ledger_v6.sql"):
        op.execute(statement)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION sc_charge_batch(text[], text[], integer[], integer[], text[], text[],"
        " bytea[], text[], text[], boolean[]),"
        " sc_hold_batch(text[], text[], integer[], integer[], integer[], text[], text[],"
        " bytea[], text[]),"
        " sc_capture_batch(text[], uuid[], integer[], text[], text[], bytea[])"
    )
