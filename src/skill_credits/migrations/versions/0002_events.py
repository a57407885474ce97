"""Events outbox: low-balance thresholds, events, webhook endpoints and deliveries."""

from alembic import op

revision = "0002"
down_revision = "0001"

UPGRADE = r"""
ALTER TABLE users ADD COLUMN low_balance_threshold bigint
    CHECK (low_balance_threshold >= 0);

CREATE TABLE events (
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    type        text NOT NULL
                CHECK (type IN ('balance.low', 'balance.depleted', 'balance.recovered',
                                'skill.changed')),
    user_id     text,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX events_user_seq ON events (user_id, seq DESC);

CREATE TABLE webhook_endpoints (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    url         text NOT NULL CHECK (url ~ '^https?://'),
    secret      text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX webhook_endpoints_live_url ON webhook_endpoints (url) WHERE active;

CREATE TABLE event_deliveries (
    event_id         uuid NOT NULL REFERENCES events (id),
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    PRIMARY KEY (event_id, endpoint_id)
);
CREATE INDEX event_deliveries_due ON event_deliveries (next_attempt_at) WHERE status = 'pending';

-- Balance events are written by the statement that changes the balance, in its
-- transaction. The WHEN clause is evaluated without calling the function, so a
-- change that crosses nothing costs next to nothing.
CREATE FUNCTION skill_credits_balance_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    t bigint := NEW.low_balance_threshold;
    data jsonb := jsonb_build_object('user_id', NEW.user_id, 'credits', NEW.credits,
                                     'previous_credits', OLD.credits, 'threshold', t);
BEGIN
    IF NEW.credits = 0 AND OLD.credits > 0 THEN
        INSERT INTO events (type, user_id, data) VALUES ('balance.depleted', NEW.user_id, data);
    END IF;
    IF t IS NOT NULL AND NEW.credits < t AND OLD.credits >= t THEN
        INSERT INTO events (type, user_id, data) VALUES ('balance.low', NEW.user_id, data);
    ELSIF t IS NOT NULL AND NEW.credits >= t AND OLD.credits < t THEN
        INSERT INTO events (type, user_id, data) VALUES ('balance.recovered', NEW.user_id, data);
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER users_balance_events AFTER UPDATE OF credits ON users FOR EACH ROW
WHEN ((NEW.credits = 0 AND OLD.credits > 0)
      OR (NEW.low_balance_threshold IS NOT NULL
          AND (NEW.credits < NEW.low_balance_threshold)
              <> (OLD.credits < NEW.low_balance_threshold)))
EXECUTE FUNCTION skill_credits_balance_events();

-- Every edit of a skill (its history row) is a skill.changed event.
CREATE FUNCTION skill_credits_skill_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO events (type, data)
    SELECT 'skill.changed',
           jsonb_build_object('name', s.name, 'version', NEW.version, 'actor', NEW.actor,
                              'changes', NEW.changes, 'cost', s.cost, 'is_active', s.is_active)
    FROM skills s WHERE s.id = NEW.skill_id;
    RETURN NULL;
END $$;

CREATE TRIGGER skill_history_events AFTER INSERT ON skill_history FOR EACH ROW
EXECUTE FUNCTION skill_credits_skill_events();

-- Every event is owed to every live endpoint, from the same transaction on.
CREATE FUNCTION skill_credits_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (event_id, endpoint_id)
    SELECT NEW.id, w.id FROM webhook_endpoints w WHERE w.active;
    RETURN NULL;
END $$;

CREATE TRIGGER events_fan_out AFTER INSERT ON events FOR EACH ROW
EXECUTE FUNCTION skill_credits_fan_out();
"""

DOWNGRADE = """
DROP TRIGGER events_fan_out ON events;
DROP FUNCTION skill_credits_fan_out();
DROP TRIGGER skill_history_events ON skill_history;
DROP FUNCTION skill_credits_skill_events();
DROP TRIGGER users_balance_events ON users;
DROP FUNCTION skill_credits_balance_events();
DROP TABLE event_deliveries;
DROP TABLE webhook_endpoints;
DROP TABLE events;
ALTER TABLE users DROP COLUMN low_balance_threshold;
"""


def _statements(script: str) -> list[str]:
    """One command each (asyncpg prepares what it runs): split at ';' outside $$ bodies."""
    statements, current, in_body = [], [], False
    for line in script.splitlines():
        current.append(line)
        if line.count("$$") % 2:
            in_body = not in_body
        if line.rstrip().endswith(";") and not in_body:
            statements.append("\n".join(current).strip())
            current = []
    return [s for s in statements if s]


def upgrade() -> None:
    for statement in _statements(UPGRADE):
        op.execute(statement)


def downgrade() -> None:
    for statement in _statements(DOWNGRADE):
        op.execute(statement)
