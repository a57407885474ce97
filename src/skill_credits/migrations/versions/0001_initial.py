"""The ledger, the skill catalogue, holds and API keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from alembic import op

revision = "0001"
down_revision = None

UPGRADE = r"""
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    name        text NOT NULL CHECK (char_length(name) BETWEEN 1 AND 100),
    role        text NOT NULL CHECK (role IN ('admin', 'service')),
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
-- A name belongs to one live key at a time; a revoked name may be reused.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE users (
    user_id     text PRIMARY KEY CHECK (user_id ~ '^[A-Za-z0-9._:@-]{1,128}$'),
    credits     bigint NOT NULL DEFAULT 0 CONSTRAINT users_credits_nonnegative CHECK (credits >= 0),
    -- Bumped by every change to the user's holds; a charge that raced one retries.
    hold_seq    bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE skills (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    display_name  text NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 120),
    description   text CHECK (char_length(description) <= 2000),
    cost          bigint NOT NULL CHECK (cost BETWEEN 0 AND 1000000000),
    is_active     boolean NOT NULL DEFAULT true,
    version       integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE skill_history (
    skill_id    uuid NOT NULL REFERENCES skills (id),
    version     integer NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    changes     jsonb NOT NULL,
    PRIMARY KEY (skill_id, version)
);

CREATE TABLE transactions (
    seq              bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          text NOT NULL REFERENCES users (user_id),
    type             text NOT NULL
                     CHECK (type IN ('CONSUMPTION', 'PURCHASE', 'GRANT', 'REFUND', 'ADJUSTMENT')),
    amount           bigint NOT NULL,
    balance_after    bigint NOT NULL CHECK (balance_after >= 0),
    skill_id         uuid REFERENCES skills (id),
    skill            text,
    units            integer CHECK (units BETWEEN 1 AND 1000000),
    unit_cost        bigint CHECK (unit_cost >= 0),
    description      text CHECK (char_length(description) <= 500),
    refund_of        uuid REFERENCES transactions (id)
                     CONSTRAINT transactions_refund_once UNIQUE,
    idempotency_key  text CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT transactions_idempotency UNIQUE (user_id, idempotency_key),
    CONSTRAINT transactions_consumption_fields CHECK (
        (type = 'CONSUMPTION')
        = (skill_id IS NOT NULL AND units IS NOT NULL AND unit_cost IS NOT NULL)
    ),
    CONSTRAINT transactions_consumption_amount CHECK (
        type <> 'CONSUMPTION' OR amount = -(units * unit_cost)
    ),
    CONSTRAINT transactions_refund_fields CHECK ((type = 'REFUND') = (refund_of IS NOT NULL)),
    CONSTRAINT transactions_sign CHECK (
        (type IN ('PURCHASE', 'GRANT') AND amount > 0)
        OR (type = 'CONSUMPTION' AND amount <= 0)
        OR (type = 'REFUND' AND amount >= 0)
        OR (type = 'ADJUSTMENT' AND amount <> 0)
    )
);
-- History pages: newest first per user, keyset on seq.
CREATE INDEX transactions_user_seq ON transactions (user_id, seq DESC);
CREATE INDEX transactions_user_type_seq ON transactions (user_id, type, seq DESC);

CREATE TABLE holds (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id          text NOT NULL REFERENCES users (user_id),
    skill_id         uuid NOT NULL REFERENCES skills (id),
    skill            text NOT NULL,
    skill_version    integer NOT NULL,
    units            integer NOT NULL CHECK (units BETWEEN 1 AND 1000000),
    unit_cost        bigint NOT NULL CHECK (unit_cost >= 0),
    amount           bigint NOT NULL CHECK (amount >= 0),
    status           text NOT NULL DEFAULT 'held'
                     CHECK (status IN ('held', 'captured', 'released', 'expired')),
    description      text CHECK (char_length(description) <= 500),
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at      timestamptz,
    transaction_id   uuid REFERENCES transactions (id),
    idempotency_key  text CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    request_hash     bytea,
    CONSTRAINT holds_idempotency UNIQUE (user_id, idempotency_key)
);
-- What a user has reserved: the holds still 'held' (and not yet past expires_at).
CREATE INDEX holds_user_held ON holds (user_id) INCLUDE (amount, expires_at) WHERE status = 'held';
"""

DOWNGRADE = """
DROP TABLE holds;
DROP TABLE transactions;
DROP TABLE skill_history;
DROP TABLE skills;
DROP TABLE users;
DROP TABLE api_keys;
"""


def _run(script: str) -> None:
    # asyncpg prepares what it runs, and a prepared statement holds one command.
    for statement in script.split(";\n"):
        if statement.strip():
            op.execute(statement)


def upgrade() -> None:
    _run(UPGRADE)


def downgrade() -> None:
    _run(DOWNGRADE)
