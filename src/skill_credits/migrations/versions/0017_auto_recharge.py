"""Auto-recharge: a rule per user, the top-ups it asks for, and the events they write.

- ``recharge_rules``: a user's rule (threshold, amount, monthly cap, what the top-up buys).
- ``recharges``: each top-up asked of the host; at most one ``pending`` per user (a unique
  index, the last line of defence behind the user's lock).
- ``users.recharge_below``: the rule's threshold while a change that leaves ``available``
  at or below it would ask (NULL otherwise): every function that lowers the balance reads
  it back from its UPDATE, so a user without a rule pays one test of a NULL.
- ``events``: three more types (``balance.recharge_requested``, ``_fulfilled``,
  ``_suspended``).

The functions come from ``ledger/sql/recharges.sql`` when the upgrade
reaches head, in the same transaction. On Citus, ``citus.sql`` puts the new tables with the
user's rows.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-07
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

UPGRADE = [
    "ALTER TABLE users ADD COLUMN recharge_below bigint",
    """CREATE TABLE recharge_rules (
    user_id               text NOT NULL,
    threshold             bigint NOT NULL,
    amount                bigint NOT NULL,
    max_per_month         bigint,
    category              text NOT NULL DEFAULT 'paid',
    priority              integer NOT NULL DEFAULT 50,
    expires_in_days       integer,
    status                text NOT NULL DEFAULT 'active',
    consecutive_failures  integer NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT recharge_rules_pkey PRIMARY KEY (user_id),
    CONSTRAINT recharge_rules_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT recharge_rules_threshold_check CHECK (threshold BETWEEN 0 AND 9007199254740992),
    CONSTRAINT recharge_rules_amount_check CHECK (amount BETWEEN 1 AND 9007199254740992),
    CONSTRAINT recharge_rules_max_per_month_check
        CHECK (max_per_month BETWEEN 1 AND 9007199254740992),
    CONSTRAINT recharge_rules_category_check CHECK (category IN ('paid', 'promotional')),
    CONSTRAINT recharge_rules_priority_check CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT recharge_rules_expires_in_days_check CHECK (expires_in_days BETWEEN 1 AND 3650),
    CONSTRAINT recharge_rules_status_check CHECK (status IN ('active', 'suspended')),
    CONSTRAINT recharge_rules_consecutive_failures_check CHECK (consecutive_failures >= 0)
)""",
    "CREATE SEQUENCE recharge_seq",
    """CREATE TABLE recharges (
    seq              bigint NOT NULL DEFAULT nextval('recharge_seq'),
    id               uuid NOT NULL,
    user_id          text NOT NULL,
    amount           bigint NOT NULL,
    category         text NOT NULL,
    priority         integer NOT NULL,
    expires_in_days  integer,
    status           text NOT NULL DEFAULT 'pending',
    reference        text,
    reason           text,
    transaction_id   uuid,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at       timestamptz NOT NULL,
    resolved_at      timestamptz,
    CONSTRAINT recharges_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT recharges_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT recharges_transaction_id_fkey FOREIGN KEY (transaction_id, user_id)
        REFERENCES transactions (id, user_id),
    CONSTRAINT recharges_amount_check CHECK (amount >= 1),
    CONSTRAINT recharges_status_check CHECK (status IN ('pending', 'fulfilled', 'failed',
                                                        'expired', 'canceled')),
    CONSTRAINT recharges_reference_check CHECK (char_length(reference) <= 255),
    CONSTRAINT recharges_reason_check CHECK (char_length(reason) BETWEEN 1 AND 500),
    CONSTRAINT recharges_fulfilled_check
        CHECK ((status = 'fulfilled') = (transaction_id IS NOT NULL))
)""",
    "CREATE UNIQUE INDEX recharges_one_pending ON recharges (user_id) WHERE status = 'pending'",
    "CREATE INDEX recharges_user_time ON recharges (user_id, created_at, seq)",
    "ALTER TABLE events DROP CONSTRAINT events_type_check",
    """ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN ('balance.low',
    'balance.depleted', 'balance.recovered', 'balance.recharge_requested',
    'balance.recharge_fulfilled', 'balance.recharge_suspended'))""",
]

DOWNGRADE = [
    "DROP FUNCTION IF EXISTS sc_recharge_ask(text)",
    "DROP FUNCTION IF EXISTS sc_recharge_json(recharges)",
    "DROP FUNCTION IF EXISTS sc_utc(timestamptz)",
    "DROP FUNCTION IF EXISTS sc_recharge_month(text)",
    "DROP FUNCTION IF EXISTS sc_recharge_rule_json(text)",
    "DROP FUNCTION IF EXISTS sc_recharge_rearm(text)",
    "DROP FUNCTION IF EXISTS sc_recharge_set(text, bigint, bigint, bigint, text, integer, integer)",
    "DROP FUNCTION IF EXISTS sc_recharge_rule(text)",
    "DROP FUNCTION IF EXISTS sc_recharge_delete(text)",
    "DROP FUNCTION IF EXISTS sc_recharge_get(text, uuid)",
    "DROP FUNCTION IF EXISTS sc_recharge_fulfil(text, uuid, text)",
    "DROP FUNCTION IF EXISTS sc_recharge_fail(text, uuid, text)",
    "DROP FUNCTION IF EXISTS sc_recharge_problems()",
    """DELETE FROM event_deliveries WHERE (event_id, user_id) IN
    (SELECT id, user_id FROM events WHERE type LIKE 'balance.recharge%')""",
    "DELETE FROM events WHERE type LIKE 'balance.recharge%'",
    "ALTER TABLE events DROP CONSTRAINT events_type_check",
    """ALTER TABLE events ADD CONSTRAINT events_type_check CHECK (type IN ('balance.low',
    'balance.depleted', 'balance.recovered'))""",
    "DROP TABLE recharges",
    "DROP SEQUENCE recharge_seq",
    "DROP TABLE recharge_rules",
    "ALTER TABLE users DROP COLUMN recharge_below",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
