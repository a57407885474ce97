-- Holds: credits set aside for a call whose cost is known when it ends; captured (for at
-- most what was held), released, or expired (users.sql writes those off).

-- POST /v1/holds: the hold counts its amount in the limits when it is made. Refusals:
-- replay, skill 404, version, disabled, user 404,
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
    v_sources jsonb;
    v_available bigint;
    v_below bigint;
BEGIN
    v_found := sc_lock(p_user);
    IF p_key IS NOT NULL THEN
        SELECT * INTO h FROM holds WHERE user_id = p_user AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN sc_hold_out('replay', h);
        END IF;
    END IF;
    SELECT * INTO s FROM skills WHERE name = p_skill;
    r.outcome := sc_refusal(s, p_version, v_found);
    IF r.outcome IS NOT NULL THEN
        RETURN sc_skill_out(r, s);
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
    v_sources := sc_take(p_user, v_need, v_until, true);
    INSERT INTO holds (id, user_id, skill_id, skill, skill_version, units, unit_cost, amount,
                       description, expires_at, idempotency_key, request_hash, sources,
                       member, created_at)
    VALUES (sc_id(p_user), p_user, s.id, s.name, s.version, p_units, s.cost, v_need, p_description, v_until,
            p_key, p_hash, v_sources, p_member, v_now)
    RETURNING * INTO h;
    IF v_limited THEN
        PERFORM sc_count(p_user, p_member, s.id, v_need, v_now, v_now);
    END IF;
    UPDATE users SET reserved = reserved + v_need, hold_seq = hold_seq + 1,
                     next_due = least(next_due, v_until)
    WHERE user_id = p_user
    RETURNING credits - reserved, recharge_below INTO v_available, v_below;
    IF v_below IS NOT NULL AND v_available <= v_below AND v_need > 0 THEN
        PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
    END IF;
    RETURN sc_skill_out(sc_hold_out('written', h), s);
END $$;

-- For capture and release: the user locked (sc_lock) and the user's hold p_hold, locked;
-- NULL when there is no such user or hold.
CREATE OR REPLACE FUNCTION sc_hold_of(p_user text, p_hold uuid) RETURNS holds
LANGUAGE plpgsql AS $$
DECLARE
    h holds;
BEGIN
    IF sc_lock(p_user) THEN
        SELECT * INTO h FROM holds WHERE user_id = p_user AND id = p_hold FOR UPDATE;
    END IF;
    RETURN h;
END $$;

-- POST /v1/holds/{id}/capture: the transaction names the hold's member, and what the hold
-- does not charge stops counting in the limits.
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
    v_seq bigint;
    v_sources jsonb;
    v_now timestamptz;
    v_available bigint;
    v_below bigint;
BEGIN
    h := sc_hold_of(p_user, p_hold);
    r := sc_answer(p_user, p_key, CASE WHEN h.id IS NULL THEN 'hold_not_found' END);
    IF r.outcome IS NOT NULL THEN
        RETURN r;
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
    PERFORM sc_unreserve(p_user, h.sources);
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
        FROM d WHERE g.user_id = p_user AND g.id = d.grant_id
        RETURNING d.grant_id, d.take, d.n
    )
    SELECT coalesce(jsonb_agg(jsonb_build_object('grant_id', grant_id, 'amount', take)
                              ORDER BY n), '[]'::jsonb)
    INTO v_sources FROM u;
    UPDATE users SET credits = credits - v_need, reserved = reserved - h.amount,
                     hold_seq = hold_seq + 1, log_seq = log_seq + 1
    WHERE user_id = p_user
    RETURNING credits, log_seq, credits - reserved, recharge_below
    INTO v_credits, v_seq, v_available, v_below;
    IF v_below IS NOT NULL AND v_available <= v_below AND v_need > 0 THEN
        PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
    END IF;
    v_now := clock_timestamp();
    INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, skill_id, skill,
                              units, unit_cost, description, idempotency_key, request_hash,
                              sources, member, created_at)
    VALUES (sc_id(p_user), v_seq, p_user, 'CONSUMPTION', -v_need, v_credits, h.skill_id, h.skill, p_units,
            h.unit_cost, coalesce(p_description, h.description), p_key, p_hash, v_sources,
            h.member, v_now)
    RETURNING * INTO t;
    PERFORM sc_count(p_user, h.member, h.skill_id, v_need - h.amount, h.created_at, v_now);
    UPDATE holds SET status = 'captured', resolved_at = v_now, transaction_id = t.id
    WHERE user_id = p_user AND id = h.id;
    RETURN sc_tx_out('written', t);
END $$;

-- POST /v1/holds/{id}/release: the limits stop counting the hold. Refusals: hold 404,
-- hold_not_active.
CREATE OR REPLACE FUNCTION sc_release(p_user text, p_hold uuid) RETURNS sc_hold_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_hold_outcome;
    h holds;
    v_now timestamptz;
BEGIN
    h := sc_hold_of(p_user, p_hold);
    IF h.id IS NULL THEN
        r.outcome := 'hold_not_found';
        RETURN r;
    END IF;
    IF h.status <> 'held' OR h.expires_at <= now() THEN
        RETURN sc_hold_out('hold_not_active', h);
    END IF;
    PERFORM sc_unreserve(p_user, h.sources);
    UPDATE users SET reserved = reserved - h.amount, hold_seq = hold_seq + 1
    WHERE user_id = p_user;
    v_now := clock_timestamp();
    PERFORM sc_count(p_user, h.member, h.skill_id, -h.amount, h.created_at, v_now);
    UPDATE holds SET status = 'released', resolved_at = v_now
    WHERE user_id = p_user AND id = h.id
    RETURNING * INTO h;
    RETURN sc_hold_out('written', h);
END $$;
