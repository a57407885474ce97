"""The charge of a user with spend limits in two statements after the one statement,
instead of five.

``skill_credits/ledger/sql/ledger_v5.sql`` (see the header there) replaces ``sc_charge``;
the tables do not change. Downgrade loads version 4's ``sc_charge`` again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from alembic import op

from skill_credits.ledger.sql import previous, statements

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in statements("ledger_v5.sql"):
        op.execute(statement)


def downgrade() -> None:
    for statement in previous("ledger_v5.sql"):
        op.execute(statement)
