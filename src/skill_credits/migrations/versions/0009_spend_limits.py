"""Spend limits and members.

``skill_credits/migrations/sql/ledger_v4.sql`` (see the header there) adds ``member`` to
transactions and holds, the ``limits`` table and ``users.limited``, and replaces the
writes that count in limits: ``sc_charge`` and ``sc_hold`` (which take the member),
``sc_capture``, ``sc_release``, ``sc_refund`` and ``sc_lock_keep`` (an expiring hold
stops counting).

Downgrade drops the limits and the members and loads the functions as they were.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-28
"""

from alembic import op

from skill_credits.migrations.sql import previous, statements

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# What version 4 made that no earlier version had, dropped after the functions are back.
DOWNGRADE_FIRST = [
    "DROP FUNCTION sc_charge(text, text, integer, integer, text, text, bytea, text, text),"
    " sc_hold(text, text, integer, integer, integer, text, text, bytea, text)",
]
DOWNGRADE_AFTER = [
    "DROP INDEX transactions_member",
    "DROP FUNCTION sc_limit_create(text, text, text, text, bigint),"
    " sc_limit_change(text, uuid, bigint), sc_limit_delete(text, uuid),"
    " sc_spent_so_far(text, text, uuid, text, timestamptz),"
    " sc_over(text, text, uuid, bigint, timestamptz),"
    " sc_count(text, text, uuid, bigint, timestamptz, timestamptz),"
    " sc_limit_json(limits, timestamptz), sc_applies(limits, text, uuid),"
    " sc_spent(limits, timestamptz), sc_window_end(text, timestamptz),"
    " sc_window_start(text, timestamptz)",
    "DROP TABLE limits",
    "DROP FUNCTION sc_limit_valid(text, bigint, bigint)",
    "ALTER TYPE sc_tx_outcome DROP ATTRIBUTE member, DROP ATTRIBUTE lim",
    "ALTER TYPE sc_hold_outcome DROP ATTRIBUTE member, DROP ATTRIBUTE lim",
    "ALTER TABLE transactions DROP COLUMN member",
    "ALTER TABLE holds DROP COLUMN member",
    "ALTER TABLE users DROP COLUMN limited",
    "DROP DOMAIN sc_member",
]


def upgrade() -> None:
    for statement in statements("ledger_v4.sql"):
        op.execute(statement)


def downgrade() -> None:
    for statement in [*DOWNGRADE_FIRST, *previous("ledger_v4.sql"), *DOWNGRADE_AFTER]:
        op.execute(statement)
