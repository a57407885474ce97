"""A random identity for this database, which binds the Redis cache to it.

Two deployments sharing one Redis (or a database dropped and created again behind a
running Redis) must never read, or be refused by, each other's cached skills: the
entries carry version numbers, and another database's version 7 is not this one's.
Every cache key therefore starts with this identity and the database's OID (which a
dump restored into a new database does not keep).
"""

from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.execute(
        "CREATE TABLE database_identity ("
        " only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),"
        " id uuid NOT NULL DEFAULT gen_random_uuid())"
    )
    op.execute("INSERT INTO database_identity DEFAULT VALUES")


def downgrade() -> None:
    op.execute("DROP TABLE database_identity")
