"""The charge of a user with spend limits in two statements (the lock, then one that
checks the limits, charges, counts and logs) instead of six.

``skill_credits/migrations/sql/ledger_v5.sql`` (see the header there) replaces ``sc_charge``
(which takes ``p_limited``, the caller's hint) and ``sc_applies``, and adds ``limited`` to
the charge's outcome; the tables do not change. Downgrade loads version 4's functions
again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29
"""

from alembic import op

from skill_credits.migrations.sql import previous, statements

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for statement in statements("ledger_v5.sql"):
        op.execute(statement)


def downgrade() -> None:
    for statement in [
        "DROP FUNCTION sc_charge(text, text, integer, integer, text, text, bytea, text, text,"
        " boolean)",
        *previous("ledger_v5.sql"),
        "ALTER TYPE sc_tx_outcome DROP ATTRIBUTE limited",
    ]:
        op.execute(statement)
