"""A user's events kept with the user's rows; the catalogue's apart.

- ``skill.changed`` events name no user: they move to ``skill_events`` (same ids, same
  seq), their deliveries to ``skill_event_deliveries``. ``events`` keeps the users'
  events, ``user_id NOT NULL``, primary key ``(id, user_id)``.
- ``event_deliveries`` gains ``user_id`` (its event's) in its key and in its foreign key
  to ``events (id, user_id)``.
- One sequence, ``event_seq`` (from the old identity's next value on), numbers both kinds,
  so ``all_events`` (the view GET /v1/events reads) lists them in one order as before.

The trigger functions that write them come from ``ledger/sql/events.sql`` when the upgrade
reaches head, in the same transaction. No downgrade (as 0012).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

UPGRADE = [
    "LOCK TABLE events, event_deliveries IN ACCESS EXCLUSIVE MODE",
    "CREATE SEQUENCE event_seq",
    "SELECT setval('event_seq', coalesce((SELECT max(seq) FROM events), 0) + 1, false)",
    "ALTER TABLE events ALTER COLUMN seq DROP IDENTITY",
    "ALTER TABLE events ALTER COLUMN seq SET DEFAULT nextval('event_seq')",
    """CREATE TABLE skill_events (
        seq         bigint NOT NULL DEFAULT nextval('event_seq'),
        id          uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
        type        text NOT NULL DEFAULT 'skill.changed',
        data        jsonb NOT NULL,
        created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        CONSTRAINT skill_events_pkey PRIMARY KEY (id),
        CONSTRAINT skill_events_type_check CHECK (type = 'skill.changed')
    )""",
    "CREATE INDEX skill_events_seq ON skill_events (seq DESC)",
    """CREATE TABLE skill_event_deliveries (
        event_id         uuid NOT NULL,
        endpoint_id      uuid NOT NULL,
        status           text NOT NULL DEFAULT 'pending',
        attempts         integer NOT NULL DEFAULT 0,
        next_attempt_at  timestamptz NOT NULL DEFAULT now(),
        last_error       text,
        delivered_at     timestamptz,
        CONSTRAINT skill_event_deliveries_pkey PRIMARY KEY (event_id, endpoint_id),
        CONSTRAINT skill_event_deliveries_event_id_fkey FOREIGN KEY (event_id)
            REFERENCES skill_events (id),
        CONSTRAINT skill_event_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id)
            REFERENCES webhook_endpoints (id),
        CONSTRAINT skill_event_deliveries_status_check
            CHECK (status IN ('pending', 'delivered', 'dead'))
    )""",
    "CREATE INDEX skill_event_deliveries_due ON skill_event_deliveries (next_attempt_at)"
    " WHERE status = 'pending'",
    # the catalogue's events and their deliveries move, as they are
    "INSERT INTO skill_events (seq, id, type, data, created_at)"
    " SELECT seq, id, type, data, created_at FROM events WHERE user_id IS NULL",
    "INSERT INTO skill_event_deliveries (event_id, endpoint_id, status, attempts,"
    " next_attempt_at, last_error, delivered_at)"
    " SELECT d.event_id, d.endpoint_id, d.status, d.attempts, d.next_attempt_at,"
    " d.last_error, d.delivered_at"
    " FROM event_deliveries d JOIN events e ON e.id = d.event_id WHERE e.user_id IS NULL",
    "DELETE FROM event_deliveries d USING events e WHERE e.id = d.event_id AND e.user_id IS NULL",
    "DELETE FROM events WHERE user_id IS NULL",
    # the users' events and deliveries keyed by the user
    "ALTER TABLE event_deliveries ADD COLUMN user_id text",
    "UPDATE event_deliveries d SET user_id = e.user_id FROM events e WHERE e.id = d.event_id",
    "ALTER TABLE event_deliveries ALTER COLUMN user_id SET NOT NULL",
    "ALTER TABLE event_deliveries DROP CONSTRAINT event_deliveries_event_id_fkey",
    "ALTER TABLE event_deliveries DROP CONSTRAINT event_deliveries_pkey",
    "ALTER TABLE events DROP CONSTRAINT events_pkey",
    "ALTER TABLE events DROP CONSTRAINT events_seq_key",
    "ALTER TABLE events ALTER COLUMN user_id SET NOT NULL",
    "ALTER TABLE events DROP CONSTRAINT events_type_check",
    "ALTER TABLE events ADD CONSTRAINT events_type_check"
    " CHECK (type IN ('balance.low', 'balance.depleted', 'balance.recovered'))",
    "ALTER TABLE events ADD CONSTRAINT events_pkey PRIMARY KEY (id, user_id)",
    "CREATE INDEX events_seq ON events (seq DESC)",
    "ALTER TABLE event_deliveries ADD CONSTRAINT event_deliveries_pkey"
    " PRIMARY KEY (event_id, endpoint_id, user_id)",
    "ALTER TABLE event_deliveries ADD CONSTRAINT event_deliveries_event_id_fkey"
    " FOREIGN KEY (event_id, user_id) REFERENCES events (id, user_id)",
    """CREATE VIEW all_events AS
    SELECT seq, id, type, user_id, data, created_at FROM events
    UNION ALL
    SELECT seq, id, type, NULL::text AS user_id, data, created_at FROM skill_events""",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("0013 does not go down, as 0012 does not (docs/database.md)")
