-- Events: written by the statement that causes them, in its transaction, and owed to
-- every live webhook endpoint from that transaction on.

-- Balance events are written by the statement that changes the balance. The trigger's
-- WHEN clause is evaluated without calling the function, so a change that crosses
-- nothing costs next to nothing.
CREATE OR REPLACE FUNCTION skill_credits_balance_events() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE TRIGGER users_balance_events AFTER UPDATE OF credits ON users FOR EACH ROW
WHEN ((NEW.credits = 0 AND OLD.credits > 0)
      OR (NEW.low_balance_threshold IS NOT NULL
          AND (NEW.credits < NEW.low_balance_threshold)
              <> (OLD.credits < NEW.low_balance_threshold)))
EXECUTE FUNCTION skill_credits_balance_events();

-- Every edit of a skill (its history row) is a skill.changed event.
CREATE OR REPLACE FUNCTION skill_credits_skill_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO skill_events (data)
    SELECT
           jsonb_build_object('name', s.name, 'version', NEW.version, 'actor', NEW.actor,
                              'changes', NEW.changes, 'cost', s.cost, 'is_active', s.is_active)
    FROM skills s WHERE s.id = NEW.skill_id;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER skill_history_events AFTER INSERT ON skill_history FOR EACH ROW
EXECUTE FUNCTION skill_credits_skill_events();

-- Every event is owed to every live endpoint, from the same transaction on: a user's
-- with the user's rows, the catalogue's apart.
CREATE OR REPLACE FUNCTION skill_credits_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (event_id, user_id, endpoint_id)
    SELECT NEW.id, NEW.user_id, w.id FROM webhook_endpoints w WHERE w.active;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER events_fan_out AFTER INSERT ON events FOR EACH ROW
EXECUTE FUNCTION skill_credits_fan_out();

CREATE OR REPLACE FUNCTION skill_credits_skill_fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO skill_event_deliveries (event_id, endpoint_id)
    SELECT NEW.id, w.id FROM webhook_endpoints w WHERE w.active;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER skill_events_fan_out AFTER INSERT ON skill_events FOR EACH ROW
EXECUTE FUNCTION skill_credits_skill_fan_out();
