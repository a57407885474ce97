"""A charge the head cannot cover (the first after a credit, or one that spans grants)
in three statements after the user's lock instead of a dozen.

``skill_credits/migrations/sql/ledger_v3.sql`` (see the header there) replaces ``sc_charge``;
the tables do not change. Downgrade loads version 2's ``sc_charge`` again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28
"""

from alembic import op

from skill_credits.migrations.sql import previous, statements

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in statements("ledger_v3.sql"):
        op.execute(statement)


def downgrade() -> None:
    for statement in previous("ledger_v3.sql"):
        op.execute(statement)
