"""Faster history pages and inserts on a large log.

- Drop the global unique index on transactions.seq: with it, PostgreSQL may walk it
  backwards for a user with many rows, filtering out every newer row of every other
  user (0.2 ms became 150+ ms at 1 M rows). Without it, a user's page can only use
  (user_id, seq DESC). Identity values are unique without an index.
- Time-ordered UUIDv7 ids for new transactions, holds and events: inserts land at the
  right edge of the primary-key index instead of anywhere in it.
"""

from alembic import op

revision = "0003"
down_revision = "0002"

UUID_V7 = r"""
CREATE FUNCTION skill_credits_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    -- 48 bits of Unix milliseconds, then random bits; version 7, variant 10
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp())
                                                * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$
"""


def upgrade() -> None:
    op.execute("ALTER TABLE transactions DROP CONSTRAINT transactions_seq_key")
    op.execute(UUID_V7)
    for table in ("transactions", "holds", "events"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT skill_credits_uuid_v7()")


def downgrade() -> None:
    for table in ("transactions", "holds", "events"):
        op.execute(f"ALTER TABLE {table} ALTER COLUMN id SET DEFAULT gen_random_uuid()")
    op.execute("DROP FUNCTION skill_credits_uuid_v7()")
    op.execute("ALTER TABLE transactions ADD CONSTRAINT transactions_seq_key UNIQUE (seq)")
