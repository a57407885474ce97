-- Usage: what was spent, on what, by whom, exact and fast on a big log.
--
-- An answer is the rollups (usage_hours, usage_skill_hours) for the whole hours of the
-- range that were rolled up, plus usage_log read live for the rest: the edges of the range
-- that are not whole hours and everything made since usage_marks.rolled_to (the tail). A
-- background step moves rolled_to on (sc_usage_roll), so the tail stays short; charges
-- never touch the rollups. docs/usage.md says why this is exact.
--
-- On a Citus cluster the step does nothing: the rollups would be written on every node in
-- a two-phase commit, and a read that saw it committed on one node and not yet on another
-- could count a step twice. There, every answer reads usage_log, aggregated on the workers.
-- These functions work across users; rule 1 of README.md is for a user's writes.

-- The instant before which every row this database will ever hold is committed already:
-- a row's created_at is read inside its transaction, so a transaction still open started
-- no later than its rows' instants, and one not started yet will make later ones. Each
-- node reads its own clock and sessions. It needs every session's start in
-- pg_stat_activity: track_activities on, and pg_read_all_stats (or a superuser) to see the
-- other roles' sessions; without them it refuses, nothing is ever rolled up, and every
-- answer reads the log (still exact, slower). While a prepared transaction (a two-phase
-- commit) is open in the database, whose start is not shown anywhere, it is -infinity:
-- nothing is rolled up until it ends.
CREATE OR REPLACE FUNCTION sc_usage_horizon() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF NOT pg_has_role('pg_read_all_stats', 'USAGE') THEN
        RAISE EXCEPTION 'usage rollups need pg_read_all_stats to see every open transaction'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF current_setting('track_activities') <> 'on'
       OR EXISTS (SELECT 1 FROM pg_stat_activity
                  WHERE datname = current_database() AND state = 'disabled') THEN
        RAISE EXCEPTION 'usage rollups need track_activities on to see every open transaction'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF EXISTS (SELECT 1 FROM pg_prepared_xacts WHERE database = current_database()) THEN
        RETURN '-infinity';
    END IF;
    RETURN least(clock_timestamp() - interval '1 second',
                 (SELECT min(xact_start) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()
                    AND backend_type <> 'autovacuum worker'));
END $$;

-- One step: the log's rows made from rolled_to up to p_horizon (sc_usage_horizon, read in
-- an earlier transaction), at most p_step of them, added to the rollups and rolled_to moved
-- on, in the caller's one transaction. The lock on usage_marks makes a second step at the
-- same time wait and then start where this one ended; a step killed midway leaves nothing.
-- Returns the new rolled_to (NULL on Citus).
CREATE OR REPLACE FUNCTION sc_usage_roll(p_horizon timestamptz, p_step interval)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE
SET jit = off AS $$
DECLARE
    v_from timestamptz;
    v_to timestamptz;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') THEN
        RETURN NULL;
    END IF;
    SELECT rolled_to INTO v_from FROM usage_marks FOR UPDATE;
    IF v_from = '-infinity' THEN  -- the first step starts at the log's first row
        SELECT least(min(created_at), p_horizon) INTO v_from FROM transactions;
        v_from := coalesce(v_from, p_horizon);
    END IF;
    v_to := least(p_horizon, v_from + p_step);
    IF v_to <= v_from THEN
        RETURN v_from;
    END IF;
    -- the step's rows summed once, added to both rollups
    WITH step AS (
        SELECT l.user_id, date_trunc('hour', l.created_at, 'UTC') AS hour,
               coalesce(l.skill, '') AS skill, coalesce(l.member, '') AS member,
               sum(l.charges) AS charges, sum(l.units) AS units, sum(l.consumed) AS consumed,
               sum(l.refunded) AS refunded, sum(l.paid * l.charges) AS paid_consumed,
               sum(l.paid * (1 - l.charges)) AS paid_refunded
        FROM usage_log l
        WHERE l.created_at >= v_from AND l.created_at < v_to
        GROUP BY 1, 2, 3, 4
    ), per_user AS (
        INSERT INTO usage_hours AS u (user_id, hour, skill, member, charges, units, consumed,
                                      refunded, paid_consumed, paid_refunded)
        SELECT * FROM step
        ON CONFLICT (user_id, hour, skill, member) DO UPDATE
        SET charges = u.charges + excluded.charges, units = u.units + excluded.units,
            consumed = u.consumed + excluded.consumed,
            refunded = u.refunded + excluded.refunded,
            paid_consumed = u.paid_consumed + excluded.paid_consumed,
            paid_refunded = u.paid_refunded + excluded.paid_refunded
    )
    INSERT INTO usage_skill_hours AS s (hour, skill, charges, units, consumed, refunded,
                                        paid_consumed, paid_refunded)
    SELECT hour, skill, sum(charges), sum(units), sum(consumed), sum(refunded),
           sum(paid_consumed), sum(paid_refunded)
    FROM step
    GROUP BY 1, 2
    ON CONFLICT (hour, skill) DO UPDATE
    SET charges = s.charges + excluded.charges, units = s.units + excluded.units,
        consumed = s.consumed + excluded.consumed, refunded = s.refunded + excluded.refunded,
        paid_consumed = s.paid_consumed + excluded.paid_consumed,
        paid_refunded = s.paid_refunded + excluded.paid_refunded;
    UPDATE usage_marks SET rolled_to = v_to;
    RETURN v_to;
END $$;

-- The rollups forgotten, to be built again from the log by the next steps (`skill-credits
-- usage-roll --rebuild`): the mend when reconcile finds an hour that differs, as after a
-- log row was written by hand with a past created_at. Until then answers read the log.
CREATE OR REPLACE FUNCTION sc_usage_rebuild() RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM usage_marks FOR UPDATE;  -- after any step under way, before the next
    -- DELETE, not TRUNCATE: an answer reading in a snapshot from before still sees them
    DELETE FROM usage_hours;
    DELETE FROM usage_skill_hours;
    UPDATE usage_marks SET rolled_to = '-infinity';
END $$;

-- Consumption in [p_from, p_to) by bucket (date_trunc p_interval, UTC) and group
-- (p_group: skill, user, member, or NULL for category and none), filtered by whichever of
-- p_user, p_member, p_skill is given: a few rows per bucket and group (one from the
-- rollups, one from the log), which the caller sums. STABLE: every statement reads the
-- snapshot of the calling query, so rolled_to and the rollups it stands for are read as
-- one. Each part is a statement of its own, chosen by IF: Citus (PostgreSQL 15) plans no
-- outer join beside a condition that is constant in the statement.
CREATE OR REPLACE FUNCTION sc_usage(p_from timestamptz, p_to timestamptz, p_interval text,
                                    p_group text, p_user text, p_member text, p_skill text)
RETURNS TABLE (start timestamptz, grp text, charges bigint, units bigint, consumed bigint,
               refunded bigint, paid_consumed bigint, paid_refunded bigint)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_custom_plan
SET jit = off AS $$
DECLARE
    v_rolled timestamptz;
    v_a timestamptz := date_trunc('hour', p_from, 'UTC');  -- the first whole hour
    v_b timestamptz := date_trunc('hour', p_to, 'UTC');    -- the end of the last one
    v_hole_to timestamptz;  -- the rollups stand for [v_a, v_hole_to); the log, the rest
BEGIN
    SELECT rolled_to INTO v_rolled FROM usage_marks;
    IF v_a < p_from THEN
        v_a := v_a + interval '1 hour';
    END IF;
    v_hole_to := greatest(v_a, least(v_b, v_rolled));
    IF v_hole_to > v_a AND p_user IS NULL AND p_member IS NULL
       AND p_group IS DISTINCT FROM 'user' AND p_group IS DISTINCT FROM 'member' THEN
        RETURN QUERY
        SELECT date_trunc(p_interval, s.hour, 'UTC') AS start,
               CASE WHEN p_group = 'skill' THEN s.skill END AS grp,
               sum(s.charges)::bigint, sum(s.units)::bigint, sum(s.consumed)::bigint,
               sum(s.refunded)::bigint, sum(s.paid_consumed)::bigint,
               sum(s.paid_refunded)::bigint
        FROM usage_skill_hours s
        WHERE s.hour >= v_a AND s.hour < v_hole_to AND (p_skill IS NULL OR s.skill = p_skill)
        GROUP BY 1, 2;
    ELSIF v_hole_to > v_a THEN
        RETURN QUERY
        SELECT date_trunc(p_interval, u.hour, 'UTC') AS start,
               CASE p_group WHEN 'skill' THEN u.skill WHEN 'user' THEN u.user_id
                            WHEN 'member' THEN nullif(u.member, '') END AS grp,
               sum(u.charges)::bigint, sum(u.units)::bigint, sum(u.consumed)::bigint,
               sum(u.refunded)::bigint, sum(u.paid_consumed)::bigint,
               sum(u.paid_refunded)::bigint
        FROM usage_hours u
        WHERE u.hour >= v_a AND u.hour < v_hole_to
          AND (p_user IS NULL OR u.user_id = p_user)
          AND (p_member IS NULL OR u.member = p_member)
          AND (p_skill IS NULL OR u.skill = p_skill)
        GROUP BY 1, 2;
    END IF;
    RETURN QUERY
    SELECT date_trunc(p_interval, l.created_at, 'UTC') AS start,
           CASE p_group WHEN 'skill' THEN coalesce(l.skill, '') WHEN 'user' THEN l.user_id
                        WHEN 'member' THEN l.member END AS grp,
           sum(l.charges)::bigint, sum(l.units)::bigint, sum(l.consumed)::bigint,
           sum(l.refunded)::bigint, sum(l.paid * l.charges)::bigint,
           sum(l.paid * (1 - l.charges))::bigint
    FROM usage_log l
    WHERE ((l.created_at >= p_from AND l.created_at < v_a)
           OR (l.created_at >= v_hole_to AND l.created_at < p_to))
      AND l.created_at < p_to
      AND (p_user IS NULL OR l.user_id = p_user)
      AND (p_member IS NULL OR l.member = p_member)
      AND (p_skill IS NULL OR l.skill = p_skill)
    GROUP BY 1, 2;
END $$;

-- reconcile: the hours whose rollups differ from the log they stand for (nothing when the
-- rollups are right), per user and over users.
CREATE OR REPLACE FUNCTION sc_usage_problems() RETURNS TABLE (problem text, hour timestamptz,
                                                              skill text, detail text)
LANGUAGE plpgsql STABLE
SET jit = off AS $$
DECLARE
    v_rolled timestamptz;
BEGIN
    SELECT rolled_to INTO v_rolled FROM usage_marks;
    RETURN QUERY
    WITH log AS (
        SELECT l.user_id, date_trunc('hour', l.created_at, 'UTC') AS hour,
               coalesce(l.skill, '') AS skill, coalesce(l.member, '') AS member,
               sum(l.charges)::bigint AS charges, sum(l.units)::bigint AS units,
               sum(l.consumed)::bigint AS consumed, sum(l.refunded)::bigint AS refunded,
               sum(l.paid * l.charges)::bigint AS paid_consumed,
               sum(l.paid * (1 - l.charges))::bigint AS paid_refunded
        FROM usage_log l WHERE l.created_at < v_rolled
        GROUP BY 1, 2, 3, 4
    ), users_off AS (
        SELECT coalesce(g.hour, u.hour) AS hour, coalesce(g.skill, u.skill) AS skill,
               coalesce(g.user_id, u.user_id) AS user_id
        FROM log g
        FULL JOIN usage_hours u USING (user_id, hour, skill, member)
        WHERE (g.charges, g.units, g.consumed, g.refunded, g.paid_consumed, g.paid_refunded)
              IS DISTINCT FROM (u.charges, u.units, u.consumed, u.refunded, u.paid_consumed,
                                u.paid_refunded)
    ), totals AS (
        SELECT g.hour, g.skill, sum(g.charges)::bigint AS charges, sum(g.units)::bigint AS units,
               sum(g.consumed)::bigint AS consumed, sum(g.refunded)::bigint AS refunded,
               sum(g.paid_consumed)::bigint AS paid_consumed,
               sum(g.paid_refunded)::bigint AS paid_refunded
        FROM log g GROUP BY 1, 2
    ), totals_off AS (
        SELECT coalesce(t.hour, s.hour) AS hour, coalesce(t.skill, s.skill) AS skill
        FROM totals t
        FULL JOIN usage_skill_hours s USING (hour, skill)
        WHERE (t.charges, t.units, t.consumed, t.refunded, t.paid_consumed, t.paid_refunded)
              IS DISTINCT FROM (s.charges, s.units, s.consumed, s.refunded, s.paid_consumed,
                                s.paid_refunded)
    )
    SELECT 'usage_hours differs from the log'::text, o.hour, o.skill, o.user_id FROM users_off o
    UNION ALL
    SELECT 'usage_skill_hours differs from the log'::text, o.hour, o.skill, NULL FROM totals_off o;
END $$;
