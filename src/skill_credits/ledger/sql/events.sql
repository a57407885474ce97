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

-- Every edit of a skill: its history row, a skill.changed event, and the event owed to
-- every live endpoint, in the edit's transaction. A function the edit calls, not triggers:
-- on a Citus cluster these tables are copied to every node, and a trigger would fire on
-- each node's copy.
CREATE OR REPLACE FUNCTION sc_skill_changed(p_skill uuid, p_version integer,
                                            p_changed_at timestamptz, p_actor text,
                                            p_changes jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_event uuid;
BEGIN
    INSERT INTO skill_history (skill_id, version, changed_at, actor, changes)
    VALUES (p_skill, p_version, p_changed_at, p_actor, p_changes);
    INSERT INTO skill_events (data)
    SELECT jsonb_build_object('name', s.name, 'version', p_version, 'actor', p_actor,
                              'changes', p_changes, 'cost', s.cost, 'is_active', s.is_active)
    FROM skills s WHERE s.id = p_skill
    RETURNING id INTO v_event;
    INSERT INTO skill_event_deliveries (event_id, endpoint_id)
    SELECT v_event, w.id FROM webhook_endpoints w WHERE w.active;
END $$;

-- Every event of a user's is owed to every live endpoint, from the same transaction on,
-- with the user's rows.
CREATE OR REPLACE FUNCTION skill_credits_fan_out() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (event_id, user_id, endpoint_id)
    SELECT NEW.id, NEW.user_id, w.id FROM webhook_endpoints w WHERE w.active;
    RETURN NULL;
END $$;

CREATE OR REPLACE TRIGGER events_fan_out AFTER INSERT ON events FOR EACH ROW
EXECUTE FUNCTION skill_credits_fan_out();
