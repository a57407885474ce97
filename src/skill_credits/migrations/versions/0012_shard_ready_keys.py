"""Keys of a user's rows that include the user, and a per-user order of the log.

- The primary keys of transactions, grants, holds and limits become ``(id, user_id)``, the
  refund-once index ``(refund_of, user_id)``, and the foreign keys that point at a
  transaction ``(x, user_id) REFERENCES transactions (id, user_id)``: a row of a user's
  points only at rows of the same user, and every key holds the column a distributed
  database shards by.
- ``transactions.seq`` stops being a global identity: ``users.log_seq`` counts the user's
  log rows, bumped by the statement that writes the row, and ``(user_id, seq)`` is
  unique. The seq a row has keeps its value (each user's rows are in the order they had),
  and each counter starts at its user's newest seq.
- The functions that took whole rows (``sc_applies``, ``sc_spent``, ``sc_limit_json``,
  ``sc_unreserve``) take columns now, and ``sc_debit`` is gone (``sc_credit`` takes from
  the grants itself): the old ones are dropped; the new ones, like every function, come
  from ``ledger/sql`` when the upgrade reaches head, in the same transaction.

The new unique indexes are built CONCURRENTLY first, so the ledger keeps taking writes
while they build; the swap holds the ledger's tables for as long as re-checking the three
foreign keys and numbering the users takes.

No downgrade: the functions of before expect a global identity the log no longer has.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

# the new unique indexes: name -> what they index
INDEXES = {
    "transactions_pkey_new": "transactions (id, user_id)",
    "grants_pkey_new": "grants (id, user_id)",
    "holds_pkey_new": "holds (id, user_id)",
    "limits_pkey_new": "limits (id, user_id)",
    "transactions_refund_once_new": "transactions (refund_of, user_id) WHERE refund_of IS NOT NULL",
    "transactions_user_seq_new": "transactions (user_id, seq DESC)",
}

# one change per ALTER TABLE (a distributed database takes no more)
SWAP = [
    # the users first, as every write of the ledger locks them
    "LOCK TABLE users, transactions, grants, holds, limits IN ACCESS EXCLUSIVE MODE",
    "ALTER TABLE grants DROP CONSTRAINT grants_transaction_id_fkey",
    "ALTER TABLE holds DROP CONSTRAINT holds_transaction_id_fkey",
    "ALTER TABLE transactions DROP CONSTRAINT transactions_refund_of_fkey",
    *(
        statement
        for table in ("transactions", "grants", "holds", "limits")
        for statement in (
            f"ALTER TABLE {table} DROP CONSTRAINT {table}_pkey",
            f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY"
            f" USING INDEX {table}_pkey_new",
        )
    ),
    "DROP INDEX transactions_refund_once",
    "ALTER INDEX transactions_refund_once_new RENAME TO transactions_refund_once",
    "DROP INDEX transactions_user_seq",
    "ALTER INDEX transactions_user_seq_new RENAME TO transactions_user_seq",
    "ALTER TABLE transactions ADD CONSTRAINT transactions_refund_of_fkey"
    " FOREIGN KEY (refund_of, user_id) REFERENCES transactions (id, user_id)",
    "ALTER TABLE grants ADD CONSTRAINT grants_transaction_id_fkey"
    " FOREIGN KEY (transaction_id, user_id) REFERENCES transactions (id, user_id)",
    "ALTER TABLE holds ADD CONSTRAINT holds_transaction_id_fkey"
    " FOREIGN KEY (transaction_id, user_id) REFERENCES transactions (id, user_id)",
    "ALTER TABLE users ADD COLUMN log_seq bigint NOT NULL DEFAULT 0",
    "UPDATE users u SET log_seq = t.seq"
    " FROM (SELECT user_id, max(seq) AS seq FROM transactions GROUP BY user_id) t"
    " WHERE t.user_id = u.user_id",
    "ALTER TABLE transactions ALTER COLUMN seq DROP IDENTITY",
    "DROP FUNCTION sc_debit(text, bigint)",
    "DROP FUNCTION sc_unreserve(holds)",
    "DROP FUNCTION sc_limit_json(limits, timestamptz)",
    "DROP FUNCTION sc_spent(limits, timestamptz)",
    "DROP FUNCTION sc_applies(limits, text, uuid)",
]


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, what in INDEXES.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}")  # a failed earlier try
            op.execute(f"CREATE UNIQUE INDEX CONCURRENTLY {name} ON {what}")
    for statement in SWAP:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError(
        "0012 does not go down: the functions of 0011 number the log with a global identity"
        " that it replaced by a counter per user (docs/database.md)"
    )
