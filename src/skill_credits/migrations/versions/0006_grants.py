"""Grants: credits with a life of their own, and the ledger's writes as database functions.

Every credit of positive amount makes a grant (category, priority, expiry); every debit
draws from grants in spending order and records what it drew in ``transactions.sources``;
a hold reserves in grants (``holds.sources``, ``grants.reserved``). Upgrading turns each
user's balance into one grant (``paid``, priority 50, never expires) that also takes the
reservations of the user's live holds, so no balance and no reservation changes.

``users.reserved`` and ``users.next_due`` let the charge guard the balance in one UPDATE
without reading holds or grants first: ``credits - reserved`` is what the grants have free,
and a user with nothing due (``next_due`` NULL or later) needs no expiry scan.

The functions live in ``skill_credits/migrations/sql/ledger_v1.sql`` (see the header there).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from alembic import op

from skill_credits.migrations.sql import statements

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

SCHEMA = [
    "ALTER TABLE transactions DROP CONSTRAINT transactions_type_check",
    "ALTER TABLE transactions ADD CONSTRAINT transactions_type_check CHECK (type IN"
    " ('CONSUMPTION', 'PURCHASE', 'GRANT', 'REFUND', 'ADJUSTMENT', 'EXPIRY')) NOT VALID",
    "ALTER TABLE transactions DROP CONSTRAINT transactions_sign",
    """ALTER TABLE transactions ADD CONSTRAINT transactions_sign CHECK (
        (type IN ('PURCHASE', 'GRANT') AND amount > 0)
        OR (type = 'CONSUMPTION' AND amount <= 0)
        OR (type = 'REFUND' AND amount >= 0)
        OR (type = 'ADJUSTMENT' AND amount <> 0)
        OR (type = 'EXPIRY' AND amount < 0)) NOT VALID""",
    # grant_id: the grant a positive credit made; sources: [{grant_id, amount}] drawn from,
    # given back to or written off (positive amounts; the row's sign says which)
    "ALTER TABLE transactions ADD COLUMN grant_id uuid,"
    " ADD COLUMN sources jsonb NOT NULL DEFAULT '[]'",
    "ALTER TABLE holds ADD COLUMN sources jsonb NOT NULL DEFAULT '[]'",
    "ALTER TABLE users ADD COLUMN reserved bigint NOT NULL DEFAULT 0"
    " CONSTRAINT users_reserved_range CHECK (reserved >= 0 AND reserved <= credits),"
    " ADD COLUMN next_due timestamptz",
    "CREATE INDEX users_next_due ON users (next_due) WHERE next_due IS NOT NULL",
    """CREATE TABLE grants (
        id              uuid PRIMARY KEY DEFAULT skill_credits_uuid_v7(),
        user_id         text NOT NULL REFERENCES users (user_id),
        transaction_id  uuid REFERENCES transactions (id),
        category        text NOT NULL CHECK (category IN ('paid', 'promotional')),
        priority        smallint NOT NULL DEFAULT 50 CHECK (priority BETWEEN 0 AND 100),
        amount          bigint NOT NULL CHECK (amount >= 0),
        remaining       bigint NOT NULL CHECK (remaining >= 0),
        reserved        bigint NOT NULL DEFAULT 0,
        expires_at      timestamptz,
        status          text NOT NULL DEFAULT 'active'
                        CHECK (status IN ('active', 'depleted', 'expired')),
        created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT grants_reserved_range CHECK (reserved >= 0 AND reserved <= remaining),
        CONSTRAINT grants_active_holds_credits CHECK ((status = 'active') = (remaining > 0))
    ) WITH (fillfactor = 80)""",
    # spending order within a status: the charge's first grant, the grants list
    "CREATE INDEX grants_user_order ON grants"
    " (user_id, status, priority, expires_at, created_at, id)",
]

# Each balance becomes one grant; live holds reserve in it; holds already past expires_at
# are marked expired (they reserved nothing since that instant anyway).
DATA = [
    "UPDATE holds SET status = 'expired', resolved_at = expires_at"
    " WHERE status = 'held' AND expires_at <= now()",
    """INSERT INTO grants (user_id, category, priority, amount, remaining, reserved, status,
                           created_at)
       SELECT u.user_id, 'paid', 50, u.credits, u.credits, coalesce(h.amount, 0),
              CASE WHEN u.credits > 0 THEN 'active' ELSE 'depleted' END, u.created_at
       FROM users u
       LEFT JOIN (SELECT user_id, sum(amount)::bigint AS amount FROM holds
                  WHERE status = 'held' GROUP BY user_id) h ON h.user_id = u.user_id""",
    """UPDATE holds h SET sources = jsonb_build_array(
           jsonb_build_object('grant_id', g.id, 'amount', h.amount))
       FROM grants g WHERE g.user_id = h.user_id AND h.status = 'held' AND h.amount > 0""",
    """UPDATE users u SET reserved = g.reserved,
                          next_due = (SELECT min(h.expires_at) FROM holds h
                                      WHERE h.user_id = u.user_id AND h.status = 'held')
       FROM grants g WHERE g.user_id = u.user_id AND g.reserved > 0""",
]

DOWNGRADE = [
    "DROP FUNCTION sc_grant_problems(), sc_user(text), sc_release(text, uuid),"
    " sc_capture(text, uuid, integer, text, text, bytea), sc_unreserve(holds),"
    " sc_hold_of(text, uuid),"
    " sc_hold(text, text, integer, integer, integer, text, text, bytea),"
    " sc_refund(text, uuid, text, text, bytea),"
    " sc_credit(text, text, bigint, text, text, bytea, timestamptz, integer, text),"
    " sc_charge(text, text, integer, integer, text, text, bytea, text),"
    " sc_short(text, bigint, timestamptz), sc_debit(text, bigint), sc_free(text, timestamptz),"
    " sc_take(text, bigint, timestamptz, boolean), sc_due_users(integer), sc_touch(text),"
    " sc_lock(text), sc_keyed(text, text), sc_expire(text), sc_next_due(text),"
    " sc_skill_out(sc_hold_outcome, skills), sc_skill_out(sc_tx_outcome, skills),"
    " sc_hold_out(text, holds), sc_tx_out(text, transactions)",
    "DROP TYPE sc_hold_outcome, sc_tx_outcome",
    "DROP TABLE grants",
    "ALTER TABLE users DROP COLUMN reserved, DROP COLUMN next_due",
    "ALTER TABLE holds DROP COLUMN sources",
    "ALTER TABLE transactions DROP COLUMN grant_id, DROP COLUMN sources",
    # the old schema has no EXPIRY: what lapsed reads as the adjustment it was
    "UPDATE transactions SET type = 'ADJUSTMENT' WHERE type = 'EXPIRY'",
    "ALTER TABLE transactions DROP CONSTRAINT transactions_type_check,"
    " ADD CONSTRAINT transactions_type_check CHECK (type IN"
    " ('CONSUMPTION', 'PURCHASE', 'GRANT', 'REFUND', 'ADJUSTMENT'))",
    """ALTER TABLE transactions DROP CONSTRAINT transactions_sign,
       ADD CONSTRAINT transactions_sign CHECK (
        (type IN ('PURCHASE', 'GRANT') AND amount > 0)
        OR (type = 'CONSUMPTION' AND amount <= 0)
        OR (type = 'REFUND' AND amount >= 0)
        OR (type = 'ADJUSTMENT' AND amount <> 0))""",
]


# The new checks only allow more, so the old rows pass them; they are validated after
# the schema change has committed, so the scan of a large log holds no lock that stops
# charges.
VALIDATE = [
    "ALTER TABLE transactions VALIDATE CONSTRAINT transactions_type_check",
    "ALTER TABLE transactions VALIDATE CONSTRAINT transactions_sign",
]


def upgrade() -> None:
    for statement in [*SCHEMA, *DATA, *statements("ledger_v1.sql")]:
        op.execute(statement)
    with op.get_context().autocommit_block():
        for statement in VALIDATE:
            op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
