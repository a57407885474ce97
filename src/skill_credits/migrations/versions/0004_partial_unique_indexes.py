"""Keyless and non-refund log rows leave the idempotency and refund-once indexes.

Both uniqueness rules only concern rows that carry the column: a charge without an
Idempotency-Key, and every row that is not a refund, had an entry of NULLs in these
indexes all the same, and at 10 M log rows the idempotency index (keyed by user) was
one more index page to touch per charge. Partial unique indexes keep the rules, under
the same names (the service maps a unique violation by that name), for the rows they
concern only.

The new indexes are built CONCURRENTLY, so a live log keeps taking charges while they
build; the swap to the old names is one short transaction.
"""

from alembic import op

revision = "0004"
down_revision = "0003"

# name: the columns and the rows the rule concerns
PARTIAL = {
    "transactions_idempotency": ("(user_id, idempotency_key)", "idempotency_key IS NOT NULL"),
    "transactions_refund_once": ("(refund_of)", "refund_of IS NOT NULL"),
}


def upgrade() -> None:
    with op.get_context().autocommit_block():
        for name, (columns, where) in PARTIAL.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {name}_new")  # a failed earlier try
            op.execute(
                f"CREATE UNIQUE INDEX CONCURRENTLY {name}_new ON transactions {columns}"
                f" WHERE {where}"
            )
    for name in PARTIAL:
        op.execute(f"ALTER TABLE transactions DROP CONSTRAINT {name}")
        op.execute(f"ALTER INDEX {name}_new RENAME TO {name}")


def downgrade() -> None:
    for name, (columns, _) in PARTIAL.items():
        op.execute(f"DROP INDEX {name}")
        op.execute(f"ALTER TABLE transactions ADD CONSTRAINT {name} UNIQUE {columns}")
