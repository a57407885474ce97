"""Charges in batches: ``sc_charge_batch`` runs many charges in one call and one commit.

``skill_credits/ledger/sql/ledger_v6.sql`` (see the header there) adds the function; the
tables and every other function stay as they are. Downgrade drops it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29
"""

from alembic import op

from skill_credits.ledger.sql import statements

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
        " bytea[], text[], text[], boolean[])"
    )
