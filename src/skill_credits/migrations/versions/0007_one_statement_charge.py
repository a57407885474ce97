"""A charge that passes every check is one statement again; CHECK constraints that
PostgreSQL need not rebuild from text for every statement.

``skill_credits/migrations/sql/ledger_v2.sql`` (see the header there) books a charge's grant
on the user's row (``users.head_grant``, ``head_free``, ``head_taken``), so a charge is
the guarded UPDATE of that row and the log insert in one statement; and it turns the
CHECK constraints of users, grants and transactions into one each, calling a PL/pgSQL
function with the same rules. The new constraints are validated after the change
commits, so the scan of a large log holds no lock that stops charges.

Downgrade folds every head into its grant, loads version 1's functions again and puts
the old constraints back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28
"""

from alembic import op

from skill_credits.migrations.sql import previous, statements

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

VALIDATE = [
    "ALTER TABLE transactions VALIDATE CONSTRAINT transactions_valid",
    "ALTER TABLE grants VALIDATE CONSTRAINT grants_valid",
    "ALTER TABLE users VALIDATE CONSTRAINT users_valid",
]

# The constraints as 0001-0006 made them (the rows met them: the rules are the same).
DOWNGRADE = [
    # no charge may add to a head between the fold and the columns' end
    "LOCK TABLE users IN EXCLUSIVE MODE",
    "DROP VIEW grants_now",
    """UPDATE grants g SET remaining = g.remaining - u.head_taken,
           status = CASE WHEN g.remaining = u.head_taken THEN 'depleted' ELSE g.status END
       FROM users u WHERE u.head_grant = g.id AND u.head_taken > 0""",
    """ALTER TABLE transactions DROP CONSTRAINT transactions_valid,
       ADD CONSTRAINT transactions_type_check CHECK (type IN
           ('CONSUMPTION', 'PURCHASE', 'GRANT', 'REFUND', 'ADJUSTMENT', 'EXPIRY')),
       ADD CONSTRAINT transactions_sign CHECK (
           (type IN ('PURCHASE', 'GRANT') AND amount > 0)
           OR (type = 'CONSUMPTION' AND amount <= 0)
           OR (type = 'REFUND' AND amount >= 0)
           OR (type = 'ADJUSTMENT' AND amount <> 0)
           OR (type = 'EXPIRY' AND amount < 0)),
       ADD CONSTRAINT transactions_balance_after_check CHECK (balance_after >= 0),
       ADD CONSTRAINT transactions_units_check CHECK (units BETWEEN 1 AND 1000000),
       ADD CONSTRAINT transactions_unit_cost_check CHECK (unit_cost >= 0),
       ADD CONSTRAINT transactions_description_check CHECK (char_length(description) <= 500),
       ADD CONSTRAINT transactions_idempotency_key_check
           CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
       ADD CONSTRAINT transactions_consumption_fields CHECK ((type = 'CONSUMPTION')
           = (skill_id IS NOT NULL AND units IS NOT NULL AND unit_cost IS NOT NULL)),
       ADD CONSTRAINT transactions_consumption_amount
           CHECK (type <> 'CONSUMPTION' OR amount = -(units * unit_cost)),
       ADD CONSTRAINT transactions_refund_fields
           CHECK ((type = 'REFUND') = (refund_of IS NOT NULL))""",
    """ALTER TABLE grants DROP CONSTRAINT grants_valid,
       ADD CONSTRAINT grants_category_check CHECK (category IN ('paid', 'promotional')),
       ADD CONSTRAINT grants_priority_check CHECK (priority BETWEEN 0 AND 100),
       ADD CONSTRAINT grants_amount_check CHECK (amount >= 0),
       ADD CONSTRAINT grants_remaining_check CHECK (remaining >= 0),
       ADD CONSTRAINT grants_reserved_range CHECK (reserved >= 0 AND reserved <= remaining),
       ADD CONSTRAINT grants_status_check
           CHECK (status IN ('active', 'depleted', 'expired')),
       ADD CONSTRAINT grants_active_holds_credits CHECK ((status = 'active') = (remaining > 0))""",
    """ALTER TABLE users DROP CONSTRAINT users_valid,
       ADD CONSTRAINT users_user_id_check CHECK (user_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
       ADD CONSTRAINT users_credits_nonnegative CHECK (credits >= 0),
       ADD CONSTRAINT users_reserved_range CHECK (reserved >= 0 AND reserved <= credits),
       ADD CONSTRAINT users_low_balance_threshold_check CHECK (low_balance_threshold >= 0)""",
    "ALTER TABLE users DROP COLUMN head_grant, DROP COLUMN head_free, DROP COLUMN head_taken",
    "DROP FUNCTION sc_transaction_valid(text, bigint, bigint, uuid, integer, bigint, text,"
    " text, uuid), sc_grant_valid(text, smallint, bigint, bigint, bigint, text),"
    " sc_user_valid(text, bigint, bigint, bigint, bigint, bigint), sc_fold(text, boolean),"
    " sc_lock_keep(text)",
]


def upgrade() -> None:
    for statement in statements("ledger_v2.sql"):
        op.execute(statement)
    with op.get_context().autocommit_block():
        for statement in VALIDATE:
            op.execute(statement)


def downgrade() -> None:
    for statement in [*DOWNGRADE, *previous("ledger_v2.sql")]:
        op.execute(statement)
