-- Spend limits and members.
--
-- A member is whoever spends from a user's balance (a teammate, an agent): charges and
-- holds take one, and it stays on the transaction and the hold. A limit caps what is
-- spent from one user's balance in a calendar window in UTC (minute, hour, day, month),
-- for everyone (member NULL) or one member, for every skill (skill_id NULL) or one.
--
-- A limit counts in its own row: `spent` in the window that starts at `window_start`. A
-- window that is no longer current has spent nothing (sc_spent), so no job resets one.
-- Every change of a count happens under the user's lock, in the write that causes it:
--   a charge counts cost x units in the window it is made in;
--   a hold counts its amount when it is made; what it does not end up charging stops
--   counting when it is released, captured for less, or expires (sc_lock_keep, just
--   before sc_expire writes the hold off) - if the hold's window is still the current one;
--   a refund stops counting what it refunds if the charge's window (a capture's: its
--   hold's) is still the current one.
-- The instant a write counts at is its row's created_at, so the log alone says which
-- window each count belongs to (sc_spent_so_far, which a new limit starts from).
--
-- A user with no limit pays nothing for them: users.limited is false, and the charge's
-- one statement is guarded by it (charge.sql).

-- The start of the calendar window in UTC of p_period that p_at falls in, and its end.
CREATE OR REPLACE FUNCTION sc_window_start(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE OR REPLACE FUNCTION sc_window_end(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT (date_trunc(p_period, p_at AT TIME ZONE 'UTC') + ('1 ' || p_period)::interval)
           AT TIME ZONE 'UTC'
$$;

-- What a limit (its window_start, period and spent) has counted in the window that p_now
-- falls in.
CREATE OR REPLACE FUNCTION sc_spent(p_window_start timestamptz, p_period text, p_spent bigint,
                                    p_now timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_window_start = sc_window_start(p_period, p_now) THEN p_spent ELSE 0 END
$$;

-- Whether a limit of p_limit_member (NULL: everyone) on p_limit_skill (NULL: every skill)
-- applies to what p_member spends on the skill p_skill (written so that a scan of a user's
-- limits is one index range, not one per member).
CREATE OR REPLACE FUNCTION sc_applies(p_limit_member text, p_limit_skill uuid, p_member text,
                                      p_skill uuid) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(p_limit_member = p_member, p_limit_member IS NULL)
       AND coalesce(p_limit_skill = p_skill, p_limit_skill IS NULL)
$$;

-- A limit as the API shows it, at p_now (p_skill: the skill's name).
CREATE OR REPLACE FUNCTION sc_limit_json(p_id uuid, p_user text, p_member text, p_skill text,
                                         p_period text, p_max bigint,
                                         p_window_start timestamptz, p_spent bigint,
                                         p_created_at timestamptz, p_now timestamptz)
RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', p_id, 'user_id', p_user, 'member', p_member, 'skill', p_skill,
        'window', p_period, 'max_credits', p_max,
        'spent', sc_spent(p_window_start, p_period, p_spent, p_now),
        'resets_at', sc_window_end(p_period, p_now), 'created_at', p_created_at)
$$;

-- The user's limit p_id as the API shows it at p_now, or NULL.
CREATE OR REPLACE FUNCTION sc_limit_of(p_user text, p_id uuid, p_now timestamptz)
RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT sc_limit_json(l.id, l.user_id, l.member, s.name, l.period, l.max_credits,
                                 l.window_start, l.spent, l.created_at, p_now)
            FROM limits l LEFT JOIN skills s ON s.id = l.skill_id
            WHERE l.user_id = p_user AND l.id = p_id);
END $$;

-- Count p_amount in the user's limits that apply to p_member and p_skill, if the window
-- of p_at (when the amount was spent) is the one p_now falls in: positive when spent,
-- negative when it stops counting. Never below 0. The caller holds the user's lock.
CREATE OR REPLACE FUNCTION sc_count(p_user text, p_member text, p_skill uuid, p_amount bigint,
                                    p_at timestamptz, p_now timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE limits l
    SET spent = greatest(sc_spent(l.window_start, l.period, l.spent, p_now) + p_amount, 0),
        window_start = sc_window_start(l.period, p_now)
    WHERE l.user_id = p_user AND sc_applies(l.member, l.skill_id, p_member, p_skill)
      AND sc_window_start(l.period, p_at) = sc_window_start(l.period, p_now);
END $$;

-- The limit that spending p_need at p_now would take past its max_credits, as the API
-- shows it (of several, the one that resets last: retrying before then is refused
-- anyway), or NULL. Spending nothing passes no limit. The caller holds the user's lock.
CREATE OR REPLACE FUNCTION sc_over(p_user text, p_member text, p_skill uuid, p_need bigint,
                                   p_now timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT sc_limit_json(l.id, l.user_id, l.member, s.name, l.period, l.max_credits,
                                 l.window_start, l.spent, l.created_at, p_now)
            FROM limits l LEFT JOIN skills s ON s.id = l.skill_id
            WHERE l.user_id = p_user AND sc_applies(l.member, l.skill_id, p_member, p_skill)
              AND p_need > 0
              AND sc_spent(l.window_start, l.period, l.spent, p_now) + p_need > l.max_credits
            ORDER BY sc_window_end(l.period, p_now) DESC, l.created_at, l.id
            LIMIT 1);
END $$;

-- What the log and the holds say the user spent in the window of p_period that p_now
-- falls in, as a limit of p_member (NULL: everyone) and p_skill (NULL: every skill)
-- counts it: charges made in it that are not captures (their hold counted) and not
-- refunded, and holds made in it - a live one whole, a captured one what it charged
-- unless that was refunded.
CREATE OR REPLACE FUNCTION sc_spent_so_far(p_user text, p_member text, p_skill uuid,
                                           p_period text, p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (WITH captures AS (
        SELECT h.transaction_id AS id FROM holds h
        WHERE h.user_id = p_user AND h.transaction_id IS NOT NULL
    )
    SELECT (coalesce((SELECT sum(-t.amount) FROM transactions t
                      WHERE t.user_id = p_user AND t.type = 'CONSUMPTION'
                        AND t.created_at >= sc_window_start(p_period, p_now)
                        AND (p_member IS NULL OR t.member = p_member)
                        AND (p_skill IS NULL OR t.skill_id = p_skill)
                        AND t.id NOT IN (SELECT id FROM captures)
                        AND NOT EXISTS (SELECT 1 FROM transactions r
                                        WHERE r.user_id = p_user
                                          AND r.refund_of = t.id)), 0)
          + coalesce((SELECT sum(CASE WHEN h.status = 'held' THEN h.amount
                                      WHEN h.status = 'captured'
                                           AND NOT EXISTS (SELECT 1 FROM transactions r
                                                           WHERE r.user_id = p_user
                                                             AND r.refund_of = c.id)
                                      THEN -c.amount
                                      ELSE 0 END)
                      FROM holds h
                      LEFT JOIN transactions c ON c.user_id = h.user_id
                                              AND c.id = h.transaction_id
                      WHERE h.user_id = p_user
                        AND h.created_at >= sc_window_start(p_period, p_now)
                        AND (p_member IS NULL OR h.member = p_member)
                        AND (p_skill IS NULL OR h.skill_id = p_skill)), 0))::bigint);
END $$;

-- POST /v1/users/{id}/limits. Refusals: user 404, skill 404, limit_exists. The new limit
-- starts from what the user already spent in the current window (sc_spent_so_far).
CREATE OR REPLACE FUNCTION sc_limit_create(p_user text, p_member text, p_skill text, p_period text,
                                p_max bigint)
RETURNS TABLE (outcome text, lim jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_skill uuid;
    v_now timestamptz;
    v_spent bigint;
    v_id uuid;
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN QUERY SELECT 'user_not_found', NULL::jsonb;
        RETURN;
    END IF;
    IF p_skill IS NOT NULL THEN
        SELECT id INTO v_skill FROM skills WHERE name = p_skill;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'skill_not_found', NULL::jsonb;
            RETURN;
        END IF;
    END IF;
    v_now := clock_timestamp();
    v_spent := sc_spent_so_far(p_user, p_member, v_skill, p_period, v_now);
    INSERT INTO limits (user_id, member, skill_id, period, max_credits, window_start, spent,
                        created_at)
    VALUES (p_user, p_member, v_skill, p_period, p_max, sc_window_start(p_period, v_now),
            v_spent, v_now)
    ON CONFLICT ON CONSTRAINT limits_one_per_scope DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        RETURN QUERY SELECT 'limit_exists', NULL::jsonb;
        RETURN;
    END IF;
    UPDATE users SET limited = true WHERE user_id = p_user AND NOT limited;
    RETURN QUERY SELECT 'written', sc_limit_of(p_user, v_id, v_now);
END $$;

-- PATCH /v1/users/{id}/limits/{limit}: the new max_credits, from the next charge on, for
-- the current window too. NULL when the user has no such limit.
CREATE OR REPLACE FUNCTION sc_limit_change(p_user text, p_id uuid, p_max bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN NULL;
    END IF;
    UPDATE limits SET max_credits = p_max WHERE user_id = p_user AND id = p_id;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    RETURN sc_limit_of(p_user, p_id, clock_timestamp());
END $$;

-- DELETE /v1/users/{id}/limits/{limit}. False when the user has no such limit.
CREATE OR REPLACE FUNCTION sc_limit_delete(p_user text, p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN false;
    END IF;
    DELETE FROM limits WHERE user_id = p_user AND id = p_id;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE users SET limited = EXISTS (SELECT 1 FROM limits WHERE user_id = p_user)
    WHERE user_id = p_user;
    RETURN true;
END $$;
