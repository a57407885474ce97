"""Usage: the log read by instant, and its rollups.

- ``transactions_created_at``: a block range index on the log's instants, for the live
  part of a usage answer (a new row costs it next to nothing). Built in the upgrade's
  transaction, it holds writes to the log while it reads the table once (seconds for
  10 million rows here).
- ``usage_log``: the log's charges, captures and refunds as usage counts them.
- ``usage_hours`` and ``usage_skill_hours``: the rollups a background step builds
  (``sc_usage_roll``), by user, hour, skill and member, and over users; ``usage_marks``:
  how far they go (nothing yet).

The functions that read and build them come from ``ledger/sql/usage.sql`` when the upgrade
reaches head, in the same transaction. On Citus, ``citus.sql`` puts the new tables on the
cluster.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07
"""

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

UPGRADE = [
    """CREATE INDEX transactions_created_at ON transactions USING brin (created_at)
    WITH (autosummarize = on)""",
    """CREATE VIEW usage_log AS
    SELECT t.user_id, t.created_at,
           CASE WHEN t.type = 'REFUND' THEN o.skill ELSE t.skill END AS skill,
           CASE WHEN t.type = 'REFUND' THEN o.member ELSE t.member END::text AS member,
           (t.type = 'CONSUMPTION')::integer AS charges,
           CASE WHEN t.type = 'CONSUMPTION' THEN t.units ELSE 0 END AS units,
           CASE WHEN t.type = 'CONSUMPTION' THEN -t.amount ELSE 0 END AS consumed,
           CASE WHEN t.type = 'REFUND' THEN t.amount ELSE 0 END AS refunded,
           (SELECT coalesce(sum(jsonb_path_query_first(
                       t.sources, '$[*] ? (@.grant_id == $id).amount',
                       jsonb_build_object('id', g.id::text))::text::bigint), 0)
            FROM grants g
            WHERE g.user_id = t.user_id AND g.category = 'paid'
              AND t.sources @> jsonb_build_array(jsonb_build_object('grant_id', g.id::text))
           )::bigint AS paid
    FROM transactions t
    LEFT JOIN transactions o
           ON t.type = 'REFUND' AND o.user_id = t.user_id AND o.id = t.refund_of
    WHERE t.type IN ('CONSUMPTION', 'REFUND')""",
    """CREATE TABLE usage_hours (
        user_id        text NOT NULL,
        hour           timestamptz NOT NULL,
        skill          text NOT NULL,
        member         text NOT NULL,
        charges        bigint NOT NULL,
        units          bigint NOT NULL,
        consumed       bigint NOT NULL,
        refunded       bigint NOT NULL,
        paid_consumed  bigint NOT NULL,
        paid_refunded  bigint NOT NULL,
        CONSTRAINT usage_hours_pkey PRIMARY KEY (user_id, hour, skill, member)
    )""",
    "CREATE INDEX usage_hours_hour ON usage_hours (hour)",
    """CREATE TABLE usage_skill_hours (
        hour           timestamptz NOT NULL,
        skill          text NOT NULL,
        charges        bigint NOT NULL,
        units          bigint NOT NULL,
        consumed       bigint NOT NULL,
        refunded       bigint NOT NULL,
        paid_consumed  bigint NOT NULL,
        paid_refunded  bigint NOT NULL,
        CONSTRAINT usage_skill_hours_pkey PRIMARY KEY (hour, skill)
    )""",
    """CREATE TABLE usage_marks (
        only_row   boolean NOT NULL DEFAULT true,
        rolled_to  timestamptz NOT NULL DEFAULT '-infinity',
        CONSTRAINT usage_marks_pkey PRIMARY KEY (only_row),
        CONSTRAINT usage_marks_only_row_check CHECK (only_row)
    )""",
    "INSERT INTO usage_marks DEFAULT VALUES",
]

DOWNGRADE = [
    "DROP FUNCTION IF EXISTS sc_usage_problems()",
    "DROP FUNCTION IF EXISTS sc_usage(timestamptz, timestamptz, text, text, text, text, text)",
    "DROP FUNCTION IF EXISTS sc_usage_roll(timestamptz, interval)",
    "DROP FUNCTION IF EXISTS sc_usage_rebuild()",
    "DROP FUNCTION IF EXISTS sc_usage_horizon()",
    "DROP TABLE usage_marks",
    "DROP TABLE usage_skill_hours",
    "DROP TABLE usage_hours",
    "DROP VIEW usage_log",
    "DROP INDEX transactions_created_at",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
