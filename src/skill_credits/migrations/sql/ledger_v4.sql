-- The ledger's functions, version 4 (loaded by migration 0009 over ledger_v3.sql): spend
-- limits and members.
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
-- one statement (ledger_v2.sql) is guarded by it. A user with limits goes the slow way
-- (the lock, the facts, the 402, then the limits, then the write), so limits are checked
-- and counted under the lock, never passed under any concurrency.

-- 1-128 characters of A-Z a-z 0-9 . _ : @ - (as a user id).
CREATE DOMAIN sc_member AS text CHECK (VALUE ~ '^[A-Za-z0-9._:@-]{1,128}$');

ALTER TABLE transactions ADD COLUMN member sc_member;
-- GET /v1/users/{id}/transactions?member=: one member's rows, newest first
CREATE INDEX transactions_member ON transactions (user_id, member, seq DESC)
    WHERE member IS NOT NULL;
ALTER TABLE holds ADD COLUMN member sc_member;
ALTER TABLE users ADD COLUMN limited boolean NOT NULL DEFAULT false;

CREATE FUNCTION sc_limit_valid(p_period text, p_max_credits bigint, p_spent bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (p_period IN ('minute', 'hour', 'day', 'month')) IS NOT FALSE
       AND (p_max_credits BETWEEN 0 AND 9007199254740992) IS NOT FALSE
       AND (p_spent >= 0) IS NOT FALSE;
END $$;

CREATE TABLE limits (
    id            uuid PRIMARY KEY DEFAULT skill_credits_uuid_v7(),
    user_id       text NOT NULL REFERENCES users (user_id),
    member        sc_member,
    skill_id      uuid REFERENCES skills (id),
    period        text NOT NULL,  -- the contract's "window" (a reserved word in SQL)
    max_credits   bigint NOT NULL,
    window_start  timestamptz NOT NULL,
    spent         bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT limits_valid CHECK (sc_limit_valid(period, max_credits, spent)),
    CONSTRAINT limits_one_per_scope UNIQUE NULLS NOT DISTINCT (user_id, member, skill_id, period)
) WITH (fillfactor = 80);

ALTER TYPE sc_tx_outcome ADD ATTRIBUTE member text, ADD ATTRIBUTE lim jsonb;
ALTER TYPE sc_hold_outcome ADD ATTRIBUTE member text, ADD ATTRIBUTE lim jsonb;

-- The start of the calendar window in UTC of p_period that p_at falls in, and its end.
CREATE FUNCTION sc_window_start(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT date_trunc(p_period, p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$$;

CREATE FUNCTION sc_window_end(p_period text, p_at timestamptz) RETURNS timestamptz
LANGUAGE sql IMMUTABLE AS $$
    SELECT (date_trunc(p_period, p_at AT TIME ZONE 'UTC') + ('1 ' || p_period)::interval)
           AT TIME ZONE 'UTC'
$$;

-- What a limit has counted in the window that p_now falls in.
CREATE FUNCTION sc_spent(l limits, p_now timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN l.window_start = sc_window_start(l.period, p_now) THEN l.spent ELSE 0 END
$$;

-- Whether a limit applies to what p_member spends on the skill p_skill.
CREATE FUNCTION sc_applies(l limits, p_member text, p_skill uuid) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT (l.member IS NULL OR l.member = p_member)
       AND (l.skill_id IS NULL OR l.skill_id = p_skill)
$$;

-- A limit as the API shows it, at p_now.
CREATE FUNCTION sc_limit_json(l limits, p_now timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'id', l.id, 'user_id', l.user_id, 'member', l.member,
        'skill', (SELECT s.name FROM skills s WHERE s.id = l.skill_id),
        'window', l.period, 'max_credits', l.max_credits, 'spent', sc_spent(l, p_now),
        'resets_at', sc_window_end(l.period, p_now), 'created_at', l.created_at)
$$;

-- Count p_amount in the user's limits that apply to p_member and p_skill, if the window
-- of p_at (when the amount was spent) is the one p_now falls in: positive when spent,
-- negative when it stops counting. Never below 0. The caller holds the user's lock.
CREATE FUNCTION sc_count(p_user text, p_member text, p_skill uuid, p_amount bigint,
                         p_at timestamptz, p_now timestamptz) RETURNS void
LANGUAGE sql AS $$
    UPDATE limits l
    SET spent = greatest(sc_spent(l, p_now) + p_amount, 0),
        window_start = sc_window_start(l.period, p_now)
    WHERE l.user_id = p_user AND sc_applies(l, p_member, p_skill)
      AND sc_window_start(l.period, p_at) = sc_window_start(l.period, p_now)
$$;

-- The limit that spending p_need at p_now would take past its max_credits, as the API
-- shows it (of several, the one that resets last: retrying before then is refused
-- anyway), or NULL. Spending nothing passes no limit. The caller holds the user's lock.
CREATE FUNCTION sc_over(p_user text, p_member text, p_skill uuid, p_need bigint,
                        p_now timestamptz) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT sc_limit_json(l, p_now) FROM limits l
    WHERE l.user_id = p_user AND sc_applies(l, p_member, p_skill)
      AND p_need > 0 AND sc_spent(l, p_now) + p_need > l.max_credits
    ORDER BY sc_window_end(l.period, p_now) DESC, l.created_at, l.id
    LIMIT 1
$$;

-- What the log and the holds say the user spent in the window of p_period that p_now
-- falls in, as a limit of p_member (NULL: everyone) and p_skill (NULL: every skill)
-- counts it: charges made in it that are not captures (their hold counted) and not
-- refunded, and holds made in it - a live one whole, a captured one what it charged
-- unless that was refunded.
CREATE FUNCTION sc_spent_so_far(p_user text, p_member text, p_skill uuid, p_period text,
                                p_now timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    WITH captures AS (
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
                                        WHERE r.refund_of = t.id)), 0)
          + coalesce((SELECT sum(CASE WHEN h.status = 'held' THEN h.amount
                                      WHEN h.status = 'captured'
                                           AND NOT EXISTS (SELECT 1 FROM transactions r
                                                           WHERE r.refund_of = c.id)
                                      THEN -c.amount
                                      ELSE 0 END)
                      FROM holds h LEFT JOIN transactions c ON c.id = h.transaction_id
                      WHERE h.user_id = p_user
                        AND h.created_at >= sc_window_start(p_period, p_now)
                        AND (p_member IS NULL OR h.member = p_member)
                        AND (p_skill IS NULL OR h.skill_id = p_skill)), 0))::bigint
$$;

-- sc_lock_keep as in ledger_v2.sql, and before what is due is written off, the holds
-- that expire stop counting in the limits (only a user with limits has any to change).
CREATE OR REPLACE FUNCTION sc_lock_keep(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
    v_taken bigint;
    v_limited boolean;
BEGIN
    SELECT next_due, head_taken, limited INTO v_due, v_taken, v_limited
    FROM users WHERE user_id = p_user
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        IF v_limited THEN
            PERFORM sc_count(p_user, h.member, h.skill_id, -h.amount, h.created_at,
                             clock_timestamp())
            FROM holds h
            WHERE h.user_id = p_user AND h.status = 'held' AND h.expires_at <= now();
        END IF;
        PERFORM sc_fold(p_user, true);
        PERFORM sc_expire(p_user);
    ELSIF v_taken > 0 THEN
        PERFORM sc_fold(p_user, false);
    END IF;
    RETURN true;
END $$;

-- POST /v1/users/{id}/limits. Refusals: user 404, skill 404, limit_exists. The new limit
-- starts from what the user already spent in the current window (sc_spent_so_far).
CREATE FUNCTION sc_limit_create(p_user text, p_member text, p_skill text, p_period text,
                                p_max bigint)
RETURNS TABLE (outcome text, lim jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_skill uuid;
    v_now timestamptz;
    l limits;
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
    INSERT INTO limits (user_id, member, skill_id, period, max_credits, window_start, spent,
                        created_at)
    VALUES (p_user, p_member, v_skill, p_period, p_max, sc_window_start(p_period, v_now),
            sc_spent_so_far(p_user, p_member, v_skill, p_period, v_now), v_now)
    ON CONFLICT ON CONSTRAINT limits_one_per_scope DO NOTHING
    RETURNING * INTO l;
    IF l.id IS NULL THEN
        RETURN QUERY SELECT 'limit_exists', NULL::jsonb;
        RETURN;
    END IF;
    UPDATE users SET limited = true WHERE user_id = p_user AND NOT limited;
    RETURN QUERY SELECT 'written', sc_limit_json(l, v_now);
END $$;

-- PATCH /v1/users/{id}/limits/{limit}: the new max_credits, from the next charge on, for
-- the current window too. NULL when the user has no such limit.
CREATE FUNCTION sc_limit_change(p_user text, p_id uuid, p_max bigint) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    l limits;
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN NULL;
    END IF;
    UPDATE limits SET max_credits = p_max WHERE id = p_id AND user_id = p_user
    RETURNING * INTO l;
    IF l.id IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN sc_limit_json(l, clock_timestamp());
END $$;

-- DELETE /v1/users/{id}/limits/{limit}. False when the user has no such limit.
CREATE FUNCTION sc_limit_delete(p_user text, p_id uuid) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN false;
    END IF;
    DELETE FROM limits WHERE id = p_id AND user_id = p_user;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE users SET limited = EXISTS (SELECT 1 FROM limits WHERE user_id = p_user)
    WHERE user_id = p_user;
    RETURN true;
END $$;

-- A transaction row as an outcome (with its member).
CREATE OR REPLACE FUNCTION sc_tx_out(p_outcome text, t transactions) RETURNS sc_tx_outcome
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    r sc_tx_outcome;
BEGIN
    r.outcome := p_outcome;
    r.id := t.id::text;
    r.user_id := t.user_id;
    r.type := t.type;
    r.amount := t.amount;
    r.balance_after := t.balance_after;
    r.skill := t.skill;
    r.units := t.units;
    r.unit_cost := t.unit_cost;
    r.description := t.description;
    r.refund_of := t.refund_of::text;
    r.grant_id := t.grant_id::text;
    r.sources := t.sources;
    r.created_at := t.created_at;
    r.request_hash := t.request_hash;
    r.member := t.member;
    RETURN r;
END $$;

-- A hold row as an outcome (a held hold past expires_at reads 'expired'; with its member).
CREATE OR REPLACE FUNCTION sc_hold_out(p_outcome text, h holds) RETURNS sc_hold_outcome
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r sc_hold_outcome;
BEGIN
    r.outcome := p_outcome;
    r.id := h.id::text;
    r.user_id := h.user_id;
    r.skill := h.skill;
    r.skill_version := h.skill_version;
    r.units := h.units;
    r.unit_cost := h.unit_cost;
    r.amount := h.amount;
    r.status := CASE WHEN h.status = 'held' AND h.expires_at <= now() THEN 'expired'
                     ELSE h.status END;
    r.expires_at := h.expires_at;
    r.created_at := h.created_at;
    r.sources := h.sources;
    r.request_hash := h.request_hash;
    r.member := h.member;
    RETURN r;
END $$;

DROP FUNCTION sc_charge(text, text, integer, integer, text, text, bytea, text);

-- POST /v1/charges, as in ledger_v3.sql, with the member and the limits. The one
-- statement is for users without limits. The slow way checks the limits after the 402
-- (429: outcome 'limited', with the limit and what the charge would count); when they
-- allow it, the one statement runs again for the user with limits (a head that covers
-- the charge), else the grants' way, and the charge is counted in the limits. The order
-- of refusals: revoked key, replay, skill 404, version, disabled, user 404, 402, 429.
-- p_version NULL: any version.
--
-- Two requests with one Idempotency-Key may both pass the statement's key check; the
-- second then fails on the unique index (transactions_idempotency) having written nothing,
-- and its caller calls again, which answers the first one's row as the replay.
CREATE OR REPLACE FUNCTION sc_charge(p_user text, p_skill text, p_version integer,
                                     p_units integer, p_description text, p_key text,
                                     p_hash bytea, p_api_key_id text,
                                     p_member text DEFAULT NULL)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    s skills;
    t transactions;
    facts record;
    v_known boolean;
    v_need bigint;
    v_now timestamptz;
    v_checked boolean := false;
BEGIN
    LOOP
        WITH priced AS (
            SELECT c AS s FROM skills c
            WHERE c.name = p_skill AND c.is_active
              AND (p_version IS NULL OR c.version = p_version)
        ), bal AS (
            UPDATE users SET credits = users.credits - (priced.s).cost * p_units,
                             head_free = users.head_free - (priced.s).cost * p_units,
                             head_taken = users.head_taken + (priced.s).cost * p_units
            FROM priced
            WHERE users.user_id = p_user
              AND users.head_free >= (priced.s).cost * p_units
              AND (users.next_due IS NULL OR users.next_due > now())
              AND (NOT users.limited OR v_checked)
              AND (p_key IS NULL OR NOT EXISTS (SELECT 1 FROM transactions x
                                                WHERE x.user_id = p_user
                                                  AND x.idempotency_key = p_key))
              AND (p_api_key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys a
                                                   WHERE a.id = p_api_key_id
                                                     AND a.revoked_at IS NULL))
            RETURNING users.credits, users.head_grant, (priced.s).cost * p_units AS need,
                      priced.s
        ), logged AS (
            INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill,
                                      units, unit_cost, description, idempotency_key,
                                      request_hash, sources, member, created_at)
            SELECT p_user, 'CONSUMPTION', -bal.need, bal.credits, (bal.s).id, (bal.s).name,
                   p_units, (bal.s).cost, p_description, p_key, p_hash,
                   CASE WHEN bal.need = 0 THEN '[]'::jsonb
                        ELSE jsonb_build_array(jsonb_build_object('grant_id', bal.head_grant,
                                                                  'amount', bal.need)) END,
                   p_member, coalesce(v_now, clock_timestamp())
            FROM bal
            RETURNING *
        )
        SELECT 'written', l.id::text, l.user_id, l.type, l.amount, l.balance_after, l.skill,
               l.units, l.unit_cost, l.description, NULL, NULL, l.sources, l.created_at,
               l.request_hash, bal.s, NULL, NULL, NULL, NULL, l.member, NULL
        INTO r FROM bal, logged l;
        IF FOUND THEN
            IF v_checked THEN
                PERFORM sc_count(p_user, p_member, (r.sk).id, -r.amount, v_now, v_now);
            END IF;
            RETURN r;
        END IF;
        -- a user with limits, checked, whose head cannot cover the charge: the grants' way
        EXIT WHEN v_checked;

        -- Nothing written. Under the user's lock (what was due written off, the head folded;
        -- a repeat that looked before its original committed sees it now), every fact the
        -- refusals need, in one query.
        v_known := sc_lock_keep(p_user);
        SELECT p_api_key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys a
                                               WHERE a.id = p_api_key_id
                                                 AND a.revoked_at IS NULL) AS key_ok,
               (SELECT x FROM transactions x WHERE x.user_id = p_user
                                               AND x.idempotency_key = p_key) AS repeated,
               (SELECT c FROM skills c WHERE c.name = p_skill) AS skill,
               (SELECT u.credits - u.reserved FROM users u WHERE u.user_id = p_user) AS free,
               (SELECT u.limited FROM users u WHERE u.user_id = p_user) AS limited
        INTO facts;
        t := facts.repeated;
        s := facts.skill;
        IF NOT facts.key_ok THEN
            r.outcome := 'key_revoked';
            RETURN r;
        END IF;
        IF t.id IS NOT NULL THEN
            RETURN sc_tx_out('replay', t);
        END IF;
        IF s.id IS NULL THEN
            r.outcome := 'skill_not_found';
            RETURN r;
        END IF;
        IF p_version IS NOT NULL AND s.version <> p_version THEN
            r.outcome := 'version';
            RETURN sc_skill_out(r, s);
        END IF;
        IF NOT s.is_active THEN
            r.outcome := 'skill_disabled';
            RETURN sc_skill_out(r, s);
        END IF;
        IF NOT v_known THEN
            r.outcome := 'user_not_found';
            RETURN r;
        END IF;
        v_need := s.cost * p_units;
        IF facts.free < v_need THEN
            RETURN sc_skill_out(sc_short(p_user, v_need, NULL), s);
        END IF;
        -- a user without limits: the grants' way
        EXIT WHEN NOT facts.limited;
        v_now := clock_timestamp();
        r.lim := sc_over(p_user, p_member, s.id, v_need, v_now);
        IF r.lim IS NOT NULL THEN
            r.outcome := 'limited';
            r.required := v_need;
            RETURN sc_skill_out(r, s);
        END IF;
        -- the limits allow it: the one statement again, now for a user with limits, counted
        -- at v_now; it still needs a head that covers it
        v_checked := true;
    END LOOP;


    -- One statement: each grant in spending order takes what the ones before it left; the
    -- balance drops by the whole; the new head is the first grant with credits left after
    -- the takes (computed from the same rows: the statement cannot see its own updates);
    -- the log row names every grant it drew from. The lock keeps the grants still.
    WITH o AS (
        SELECT f.id, f.remaining - f.reserved AS free,
               sum(f.remaining - f.reserved) OVER w AS upto, row_number() OVER w AS n
        FROM grants f
        WHERE f.user_id = p_user AND f.status = 'active' AND f.remaining > f.reserved
        WINDOW w AS (ORDER BY f.priority, f.expires_at, f.created_at, f.id)
    ), d AS (
        SELECT o.id, o.n, least(o.free, v_need - (o.upto - o.free)) AS take
        FROM o WHERE o.upto - o.free < v_need
    ), taken AS (
        UPDATE grants g
        SET remaining = g.remaining - d.take,
            status = CASE WHEN g.remaining = d.take THEN 'depleted' ELSE g.status END
        FROM d WHERE g.id = d.id
        RETURNING g.id, d.take, d.n
    ), head AS (
        SELECT o.id, o.free - coalesce(d.take, 0) AS free
        FROM o LEFT JOIN d ON d.id = o.id
        WHERE o.free > coalesce(d.take, 0)
        ORDER BY o.n LIMIT 1
    ), bal AS (
        UPDATE users u
        SET credits = u.credits - v_need, head_taken = 0,
            (head_grant, head_free) = (SELECT head.id, head.free FROM head)
        WHERE u.user_id = p_user
        RETURNING u.credits
    ), logged AS (
        INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill,
                                  units, unit_cost, description, idempotency_key,
                                  request_hash, sources, member, created_at)
        SELECT p_user, 'CONSUMPTION', -v_need, bal.credits, s.id, s.name, p_units, s.cost,
               p_description, p_key, p_hash,
               coalesce((SELECT jsonb_agg(jsonb_build_object('grant_id', taken.id,
                                                             'amount', taken.take)
                                          ORDER BY taken.n) FROM taken), '[]'::jsonb),
               p_member, coalesce(v_now, clock_timestamp())
        FROM bal
        RETURNING *
    )
    SELECT l.* INTO t FROM logged l
    WHERE (SELECT coalesce(sum(taken.take), 0) FROM taken) = v_need;
    IF NOT FOUND THEN
        -- the grants disagree with the balance: write nothing
        RAISE EXCEPTION 'the grants of % do not cover %', p_user, v_need;
    END IF;
    IF facts.limited THEN
        PERFORM sc_count(p_user, p_member, s.id, v_need, v_now, v_now);
    END IF;
    r := sc_tx_out('written', t);
    r.sk := s;
    RETURN r;
END $$;

DROP FUNCTION sc_hold(text, text, integer, integer, integer, text, text, bytea);

-- POST /v1/holds, as in ledger_v1.sql, with the member and the limits: the hold counts
-- its amount when it is made. Refusals: replay, skill 404, version, disabled, user 404,
-- 402 (available = what the grants that outlive the hold have free), 429.
CREATE OR REPLACE FUNCTION sc_hold(p_user text, p_skill text, p_version integer,
                                   p_units integer, p_ttl integer, p_description text,
                                   p_key text, p_hash bytea,
                                   p_member text DEFAULT NULL)
RETURNS sc_hold_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_hold_outcome;
    s skills;
    h holds;
    v_found boolean;
    v_need bigint;
    v_until timestamptz := now() + make_interval(secs => p_ttl);
    v_short sc_tx_outcome;
    v_now timestamptz;
    v_limited boolean;
BEGIN
    v_found := sc_lock(p_user);
    IF p_key IS NOT NULL THEN
        SELECT * INTO h FROM holds WHERE user_id = p_user AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN sc_hold_out('replay', h);
        END IF;
    END IF;
    SELECT * INTO s FROM skills WHERE name = p_skill;
    IF NOT FOUND THEN
        r.outcome := 'skill_not_found';
        RETURN r;
    END IF;
    IF p_version IS NOT NULL AND s.version <> p_version THEN
        r.outcome := 'version';
        RETURN sc_skill_out(r, s);
    END IF;
    IF NOT s.is_active THEN
        r.outcome := 'skill_disabled';
        RETURN sc_skill_out(r, s);
    END IF;
    IF NOT v_found THEN
        r.outcome := 'user_not_found';
        RETURN r;
    END IF;
    v_need := s.cost * p_units;
    IF sc_free(p_user, v_until) < v_need THEN
        v_short := sc_short(p_user, v_need, v_until);
        r.outcome := v_short.outcome;
        r.credits := v_short.credits;
        r.available := v_short.available;
        r.required := v_short.required;
        RETURN sc_skill_out(r, s);
    END IF;
    v_now := clock_timestamp();
    -- a user without limits has none to check or count
    v_limited := (SELECT u.limited FROM users u WHERE u.user_id = p_user);
    IF v_limited THEN
        r.lim := sc_over(p_user, p_member, s.id, v_need, v_now);
        IF r.lim IS NOT NULL THEN
            r.outcome := 'limited';
            r.required := v_need;
            RETURN sc_skill_out(r, s);
        END IF;
    END IF;
    INSERT INTO holds (user_id, skill_id, skill, skill_version, units, unit_cost, amount,
                       description, expires_at, idempotency_key, request_hash, sources,
                       member, created_at)
    VALUES (p_user, s.id, s.name, s.version, p_units, s.cost, v_need, p_description, v_until,
            p_key, p_hash, sc_take(p_user, v_need, v_until, true), p_member, v_now)
    RETURNING * INTO h;
    IF v_limited THEN
        PERFORM sc_count(p_user, p_member, s.id, v_need, v_now, v_now);
    END IF;
    UPDATE users SET reserved = reserved + v_need, hold_seq = hold_seq + 1,
                     next_due = least(next_due, v_until)
    WHERE user_id = p_user;
    RETURN sc_skill_out(sc_hold_out('written', h), s);
END $$;

-- POST /v1/holds/{id}/capture, as in ledger_v1.sql: the transaction names the hold's
-- member, and what the hold does not charge stops counting in the limits.
CREATE OR REPLACE FUNCTION sc_capture(p_user text, p_hold uuid, p_units integer,
                                      p_description text, p_key text, p_hash bytea)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    h holds;
    t transactions;
    v_need bigint;
    v_credits bigint;
    v_sources jsonb;
BEGIN
    IF NOT sc_lock(p_user) THEN
        r.outcome := 'hold_not_found';
        RETURN r;
    END IF;
    h := sc_hold_of(p_user, p_hold);
    IF h.id IS NULL THEN
        r.outcome := 'hold_not_found';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        t := sc_keyed(p_user, p_key);
        IF t.id IS NOT NULL THEN
            RETURN sc_tx_out('replay', t);
        END IF;
    END IF;
    IF h.status <> 'held' OR h.expires_at <= now() THEN
        r.outcome := 'hold_not_active';
        r.hold_status := (sc_hold_out('', h)).status;
        RETURN r;
    END IF;
    IF p_units > h.units THEN
        RAISE EXCEPTION 'capture of % units from a hold of %', p_units, h.units;
    END IF;
    v_need := h.unit_cost * p_units;
    PERFORM sc_unreserve(h);
    WITH parts AS (
        SELECT (e ->> 'grant_id')::uuid AS grant_id, (e ->> 'amount')::bigint AS amount, n,
               sum((e ->> 'amount')::bigint) OVER (ORDER BY n) AS upto
        FROM jsonb_array_elements(h.sources) WITH ORDINALITY AS x(e, n)
    ), d AS (
        SELECT grant_id, n, least(amount, v_need - (upto - amount)) AS take
        FROM parts WHERE upto - amount < v_need
    ), u AS (
        UPDATE grants g SET remaining = g.remaining - d.take,
            status = CASE WHEN g.remaining = d.take THEN 'depleted' ELSE g.status END
        FROM d WHERE g.id = d.grant_id
        RETURNING d.grant_id, d.take, d.n
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('grant_id', grant_id, 'amount', take)
                              ORDER BY n), '[]'::jsonb)
    INTO v_sources FROM u;
    UPDATE users SET credits = credits - v_need WHERE user_id = p_user
    RETURNING credits INTO v_credits;
    INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill, units,
                              unit_cost, description, idempotency_key, request_hash, sources,
                              member)
    VALUES (p_user, 'CONSUMPTION', -v_need, v_credits, h.skill_id, h.skill, p_units,
            h.unit_cost, coalesce(p_description, h.description), p_key, p_hash, v_sources,
            h.member)
    RETURNING * INTO t;
    PERFORM sc_count(p_user, h.member, h.skill_id, v_need - h.amount, h.created_at,
                     clock_timestamp());
    UPDATE holds SET status = 'captured', resolved_at = clock_timestamp(), transaction_id = t.id
    WHERE id = h.id;
    RETURN sc_tx_out('written', t);
END $$;

-- POST /v1/holds/{id}/release, as in ledger_v1.sql: and the limits stop counting the
-- hold. Refusals: hold 404, hold_not_active.
CREATE OR REPLACE FUNCTION sc_release(p_user text, p_hold uuid) RETURNS sc_hold_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_hold_outcome;
    h holds;
BEGIN
    IF NOT sc_lock(p_user) THEN
        r.outcome := 'hold_not_found';
        RETURN r;
    END IF;
    h := sc_hold_of(p_user, p_hold);
    IF h.id IS NULL THEN
        r.outcome := 'hold_not_found';
        RETURN r;
    END IF;
    IF h.status <> 'held' OR h.expires_at <= now() THEN
        RETURN sc_hold_out('hold_not_active', h);
    END IF;
    PERFORM sc_unreserve(h);
    PERFORM sc_count(p_user, h.member, h.skill_id, -h.amount, h.created_at, clock_timestamp());
    UPDATE holds SET status = 'released', resolved_at = clock_timestamp() WHERE id = h.id
    RETURNING * INTO h;
    RETURN sc_hold_out('written', h);
END $$;

-- POST /v1/transactions/{id}/refund, as in ledger_v1.sql: and the limits stop counting
-- what it refunds if the charge counted in the current window.
CREATE OR REPLACE FUNCTION sc_refund(p_user text, p_tx uuid, p_description text, p_key text,
                          p_hash bytea)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    o transactions;
    t transactions;
    v_sources jsonb;
    v_lapsed jsonb;
    v_lapsed_total bigint;
    v_credits bigint;
BEGIN
    IF NOT sc_lock(p_user) THEN
        r.outcome := 'not_found';
        RETURN r;
    END IF;
    SELECT * INTO o FROM transactions WHERE id = p_tx AND user_id = p_user;
    IF NOT FOUND THEN
        r.outcome := 'not_found';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        t := sc_keyed(p_user, p_key);
        IF t.id IS NOT NULL THEN
            RETURN sc_tx_out('replay', t);
        END IF;
    END IF;
    IF o.type <> 'CONSUMPTION' THEN
        r := sc_tx_out('not_refundable', o);
        RETURN r;
    END IF;
    IF EXISTS (SELECT 1 FROM transactions x WHERE x.refund_of = o.id) THEN
        r.outcome := 'already_refunded';
        RETURN r;
    END IF;
    v_sources := o.sources;
    IF v_sources = '[]'::jsonb AND o.amount < 0 THEN
        SELECT jsonb_build_array(jsonb_build_object('grant_id', g.id, 'amount', -o.amount))
        INTO v_sources
        FROM grants g WHERE g.user_id = p_user AND g.transaction_id IS NULL
        ORDER BY g.created_at LIMIT 1;
    END IF;
    -- back to the grants that still live; the lapsed parts, as they were. A grant written
    -- off already is lapsed whatever now() says: this transaction's now() may predate the
    -- expiry that another request wrote off before this one had the user's lock.
    WITH parts AS (
        SELECT (e ->> 'grant_id')::uuid AS grant_id, (e ->> 'amount')::bigint AS amount, n
        FROM jsonb_array_elements(v_sources) WITH ORDINALITY AS x(e, n)
    ), back AS (
        UPDATE grants g SET remaining = g.remaining + parts.amount, status = 'active'
        FROM parts
        WHERE g.id = parts.grant_id AND g.status <> 'expired'
          AND (g.expires_at IS NULL OR g.expires_at > now())
        RETURNING g.id
    ), lapsed AS (
        UPDATE grants g SET status = 'expired'
        FROM parts
        WHERE g.id = parts.grant_id AND (g.status = 'expired' OR g.expires_at <= now())
        RETURNING parts.grant_id, parts.amount, parts.n
    )
    SELECT jsonb_agg(jsonb_build_object('grant_id', grant_id, 'amount', amount) ORDER BY n),
           sum(amount)
    INTO v_lapsed, v_lapsed_total FROM lapsed;
    UPDATE users SET credits = credits - o.amount,
                     next_due = least(next_due, (SELECT min(g.expires_at) FROM grants g
                         JOIN jsonb_array_elements(v_sources) e
                           ON g.id = (e ->> 'grant_id')::uuid
                         WHERE g.status = 'active'))
    WHERE user_id = p_user
    RETURNING credits INTO v_credits;
    INSERT INTO transactions (user_id, type, amount, balance_after, refund_of, description,
                              idempotency_key, request_hash, sources)
    VALUES (p_user, 'REFUND', -o.amount, v_credits, o.id, p_description, p_key, p_hash,
            coalesce(v_sources, '[]'::jsonb))
    RETURNING * INTO t;
    -- the limits stop counting it if it counted in the current window (a capture counted
    -- when its hold was made)
    PERFORM sc_count(p_user, o.member, o.skill_id, o.amount,
                     coalesce((SELECT h.created_at FROM holds h
                               WHERE h.user_id = p_user AND h.transaction_id = o.id),
                              o.created_at),
                     clock_timestamp());
    IF v_lapsed_total > 0 THEN
        UPDATE users SET credits = credits - v_lapsed_total WHERE user_id = p_user
        RETURNING credits INTO v_credits;
        INSERT INTO transactions (user_id, type, amount, balance_after, sources)
        VALUES (p_user, 'EXPIRY', -v_lapsed_total, v_credits, v_lapsed);
    END IF;
    RETURN sc_tx_out('written', t);
END $$;
