-- Auto-recharge: a rule per user, and the top-ups it asks the host for, exactly once.
--
-- users.recharge_below is the rule's threshold while a request may be made (the rule
-- active, none pending), else NULL. Every function that lowers a user's credits or raises
-- what they have reserved (sc_charge, sc_hold, sc_capture, sc_credit below 0, sc_refund's
-- lapsed part, sc_expire's grants) has its UPDATE of the user's row return available
-- (credits - reserved) and recharge_below, and calls sc_recharge_ask when available is at
-- or below it: the request is made in the transaction of that change, under the user's
-- row lock that every write of the user holds, so at most one is ever pending and the
-- monthly cap is checked against every request the user has. A user without a rule pays
-- one test of a NULL. (Not a trigger: a trigger's WHEN clause is read and compiled again
-- by every UPDATE of users, about 57 000 instructions a charge; BENCHMARKS.md.) Credits
-- and releases never ask (they raise available).

-- An instant as the API writes it, RFC 3339 in UTC whatever the session's time zone (the
-- JSON of a request is also the data of its events, sent as it is).
CREATE OR REPLACE FUNCTION sc_utc(p_at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
$$;

-- A request as the API shows it (also the data of its events).
CREATE OR REPLACE FUNCTION sc_recharge_json(q recharges) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'id', q.id, 'user_id', q.user_id, 'amount', q.amount, 'status', q.status,
        'reference', q.reference, 'reason', q.reason, 'transaction_id', q.transaction_id,
        'created_at', sc_utc(q.created_at), 'resolved_at', sc_utc(q.resolved_at))
$$;

-- The credits of this calendar month's (UTC) requests that are pending or fulfilled.
CREATE OR REPLACE FUNCTION sc_recharge_month(p_user text) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(q.amount), 0) FROM recharges q
            WHERE q.user_id = p_user AND q.status IN ('pending', 'fulfilled')
              AND q.created_at >= date_trunc('month', now(), 'UTC'));
END $$;

-- The rule as the API shows it, with this month's requested credits and the pending
-- request; NULL when the user has none.
CREATE OR REPLACE FUNCTION sc_recharge_rule_json(p_user text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r recharge_rules;
    q recharges;
    v_month bigint;
BEGIN
    SELECT * INTO r FROM recharge_rules WHERE user_id = p_user;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT * INTO q FROM recharges WHERE user_id = p_user AND status = 'pending';
    v_month := sc_recharge_month(p_user);
    RETURN jsonb_build_object(
        'user_id', r.user_id, 'threshold', r.threshold, 'amount', r.amount,
        'max_per_month', r.max_per_month, 'category', r.category, 'priority', r.priority,
        'expires_in_days', r.expires_in_days, 'status', r.status,
        'requested_this_month', v_month, 'consecutive_failures', r.consecutive_failures,
        'pending', CASE WHEN q.id IS NOT NULL THEN sc_recharge_json(q) END,
        'updated_at', sc_utc(r.updated_at));
END $$;

-- Ask for a top-up if the rule says so, for a user the caller has locked (after a change that
-- left available at or below recharge_below, or as the rule is set): the rule active,
-- none pending, available at or below the threshold, and the month's cap not passed. The
-- request and its event are written here; recharge_below is cleared while it is pending.
-- The request expires 24 hours on (sc_expire), like a hold.
CREATE OR REPLACE FUNCTION sc_recharge_ask(p_user text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    r recharge_rules;
    q recharges;
    v_available bigint;
    v_month bigint;
    v_now timestamptz;
BEGIN
    SELECT * INTO r FROM recharge_rules WHERE user_id = p_user;
    IF NOT FOUND OR r.status <> 'active' THEN
        RETURN;
    END IF;
    SELECT credits - reserved INTO v_available FROM users WHERE user_id = p_user;
    IF v_available > r.threshold
       OR EXISTS (SELECT 1 FROM recharges WHERE user_id = p_user AND status = 'pending') THEN
        RETURN;
    END IF;
    IF r.max_per_month IS NOT NULL THEN
        v_month := sc_recharge_month(p_user);
        IF v_month + r.amount > r.max_per_month THEN
            RETURN;  -- recharge_below stays: a change next month may ask
        END IF;
    END IF;
    v_now := clock_timestamp();
    INSERT INTO recharges (id, user_id, amount, category, priority, expires_in_days,
                           created_at, expires_at)
    VALUES (sc_id(p_user), p_user, r.amount, r.category, r.priority, r.expires_in_days,
            v_now, v_now + interval '24 hours')
    RETURNING * INTO q;
    UPDATE users SET recharge_below = NULL, next_due = least(next_due, q.expires_at)
    WHERE user_id = p_user;
    INSERT INTO events (type, user_id, data)
    VALUES ('balance.recharge_requested', p_user, sc_recharge_json(q));
END $$;

-- recharge_below again from the rule, for a user the caller has locked whose request was
-- resolved (or whose rule changed): the threshold if the rule is active and none is
-- pending, else NULL.
CREATE OR REPLACE FUNCTION sc_recharge_rearm(p_user text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_below bigint;
BEGIN
    SELECT r.threshold INTO v_below FROM recharge_rules r
    WHERE r.user_id = p_user AND r.status = 'active'
      AND NOT EXISTS (SELECT 1 FROM recharges q
                      WHERE q.user_id = p_user AND q.status = 'pending');
    UPDATE users SET recharge_below = v_below
    WHERE user_id = p_user AND recharge_below IS DISTINCT FROM v_below;
END $$;

-- PUT /v1/users/{id}/auto-recharge: sets or replaces the rule, active, its failures
-- cleared; asks at once if available already is at or below the threshold. NULL for an
-- unknown user.
CREATE OR REPLACE FUNCTION sc_recharge_set(p_user text, p_threshold bigint, p_amount bigint,
                                           p_max bigint, p_category text, p_priority integer,
                                           p_days integer)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN NULL;
    END IF;
    v_now := clock_timestamp();
    INSERT INTO recharge_rules (user_id, threshold, amount, max_per_month, category,
                                priority, expires_in_days, status, consecutive_failures,
                                updated_at)
    VALUES (p_user, p_threshold, p_amount, p_max, p_category, p_priority, p_days, 'active', 0,
            v_now)
    ON CONFLICT (user_id) DO UPDATE
    SET threshold = EXCLUDED.threshold, amount = EXCLUDED.amount,
        max_per_month = EXCLUDED.max_per_month, category = EXCLUDED.category,
        priority = EXCLUDED.priority, expires_in_days = EXCLUDED.expires_in_days,
        status = 'active', consecutive_failures = 0, updated_at = EXCLUDED.updated_at;
    PERFORM sc_recharge_rearm(p_user);
    PERFORM sc_recharge_ask(p_user);
    RETURN sc_recharge_rule_json(p_user);
END $$;

-- GET /v1/users/{id}/auto-recharge, after what is due was written off. outcome:
-- user_not_found, auto_recharge_not_found or found.
CREATE OR REPLACE FUNCTION sc_recharge_rule(p_user text)
RETURNS TABLE (outcome text, rule jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    v_rule jsonb;
BEGIN
    IF NOT sc_touch(p_user) THEN
        RETURN QUERY SELECT 'user_not_found', NULL::jsonb;
        RETURN;
    END IF;
    v_rule := sc_recharge_rule_json(p_user);
    RETURN QUERY SELECT CASE WHEN v_rule IS NULL THEN 'auto_recharge_not_found'
                             ELSE 'found' END, v_rule;
END $$;

-- DELETE /v1/users/{id}/auto-recharge: the rule goes, a pending request is canceled.
CREATE OR REPLACE FUNCTION sc_recharge_delete(p_user text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz;
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN 'user_not_found';
    END IF;
    DELETE FROM recharge_rules WHERE user_id = p_user;
    IF NOT FOUND THEN
        RETURN 'auto_recharge_not_found';
    END IF;
    v_now := clock_timestamp();
    UPDATE recharges SET status = 'canceled', resolved_at = v_now
    WHERE user_id = p_user AND status = 'pending';
    UPDATE users SET recharge_below = NULL WHERE user_id = p_user;
    RETURN 'deleted';
END $$;

-- GET /v1/recharges/{id}, after what is due was written off (a request past its 24 hours
-- reads expired). NULL when the user has no such request.
CREATE OR REPLACE FUNCTION sc_recharge_get(p_user text, p_id uuid) RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    q recharges;
BEGIN
    IF NOT sc_touch(p_user) THEN
        RETURN NULL;
    END IF;
    SELECT * INTO q FROM recharges WHERE user_id = p_user AND id = p_id;
    RETURN CASE WHEN q.id IS NOT NULL THEN sc_recharge_json(q) END;
END $$;

-- POST /v1/recharges/{id}/fulfil: one PURCHASE of the request's amount with what the rule
-- said to buy when it asked (description: the request), the request fulfilled, the rule's
-- failures cleared, balance.recharge_fulfilled. A fulfilled request answers its purchase
-- again ('replay'); any other not pending is 'recharge_not_pending'; 'not_found'.
CREATE OR REPLACE FUNCTION sc_recharge_fulfil(p_user text, p_id uuid, p_reference text)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    q recharges;
    t transactions;
    r sc_tx_outcome;
    v_now timestamptz;
BEGIN
    IF sc_lock(p_user) THEN
        SELECT * INTO q FROM recharges WHERE user_id = p_user AND id = p_id;
    END IF;
    IF q.id IS NULL THEN
        r.outcome := 'not_found';
        RETURN r;
    ELSIF q.status = 'fulfilled' THEN
        SELECT * INTO t FROM transactions WHERE user_id = p_user AND id = q.transaction_id;
        RETURN sc_tx_out('replay', t);
    ELSIF q.status <> 'pending' THEN
        r.outcome := 'recharge_not_pending';
        RETURN r;
    END IF;
    v_now := clock_timestamp();
    r := sc_credit(p_user, 'PURCHASE', q.amount, 'auto-recharge ' || q.id, NULL, NULL,
                   v_now + q.expires_in_days * interval '1 day', q.priority, q.category);
    UPDATE recharges SET status = 'fulfilled', reference = p_reference,
                         transaction_id = r.id::uuid, resolved_at = v_now
    WHERE user_id = p_user AND id = p_id
    RETURNING * INTO q;
    UPDATE recharge_rules SET consecutive_failures = 0
    WHERE user_id = p_user AND consecutive_failures > 0;
    PERFORM sc_recharge_rearm(p_user);
    INSERT INTO events (type, user_id, data)
    VALUES ('balance.recharge_fulfilled', p_user, sc_recharge_json(q));
    RETURN r;
END $$;

-- POST /v1/recharges/{id}/fail: the request failed with p_reason; the third failure in a
-- row suspends the rule (balance.recharge_suspended). outcome: written, repeat (it had
-- failed already: nothing changes), recharge_not_pending, not_found; req: the request.
CREATE OR REPLACE FUNCTION sc_recharge_fail(p_user text, p_id uuid, p_reason text)
RETURNS TABLE (outcome text, req jsonb)
LANGUAGE plpgsql AS $$
DECLARE
    q recharges;
    v_now timestamptz;
    v_status text;
    v_rule jsonb;
BEGIN
    IF sc_lock_keep(p_user) THEN
        SELECT * INTO q FROM recharges WHERE user_id = p_user AND id = p_id;
    END IF;
    IF q.id IS NULL THEN
        RETURN QUERY SELECT 'not_found', NULL::jsonb;
        RETURN;
    ELSIF q.status = 'failed' THEN
        RETURN QUERY SELECT 'repeat', sc_recharge_json(q);
        RETURN;
    ELSIF q.status <> 'pending' THEN
        RETURN QUERY SELECT 'recharge_not_pending', sc_recharge_json(q);
        RETURN;
    END IF;
    v_now := clock_timestamp();
    UPDATE recharges SET status = 'failed', reason = p_reason, resolved_at = v_now
    WHERE user_id = p_user AND id = p_id
    RETURNING * INTO q;
    UPDATE recharge_rules
    SET consecutive_failures = consecutive_failures + 1,
        status = CASE WHEN consecutive_failures + 1 >= 3 THEN 'suspended' ELSE status END
    WHERE user_id = p_user
    RETURNING status INTO v_status;
    PERFORM sc_recharge_rearm(p_user);
    IF v_status = 'suspended' THEN
        v_rule := sc_recharge_rule_json(p_user);
        INSERT INTO events (type, user_id, data)
        VALUES ('balance.recharge_suspended', p_user, v_rule);
    END IF;
    RETURN QUERY SELECT 'written', sc_recharge_json(q);
END $$;

-- For reconcile: users whose recharge_below disagrees with their rule and requests, more
-- than one pending request (the index forbids it; this says so if it were dropped), and a
-- request whose purchase is not the one PURCHASE of its amount.
CREATE OR REPLACE FUNCTION sc_recharge_problems()
RETURNS TABLE (user_id text, problem text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT u.user_id, format('recharge_below is %s, the rule says %s',
                             coalesce(u.recharge_below::text, 'NULL'),
                             coalesce(x.below::text, 'NULL'))
    FROM users u
    LEFT JOIN (SELECT r.user_id, r.threshold AS below FROM recharge_rules r
               WHERE r.status = 'active'
                 AND NOT EXISTS (SELECT 1 FROM recharges q
                                 WHERE q.user_id = r.user_id AND q.status = 'pending')) x
           ON x.user_id = u.user_id
    WHERE u.recharge_below IS DISTINCT FROM x.below
    UNION ALL
    SELECT q.user_id, format('%s pending requests', count(*))
    FROM recharges q WHERE q.status = 'pending'
    GROUP BY q.user_id HAVING count(*) > 1
    UNION ALL
    SELECT q.user_id, format('request %s is %s but its purchase is %s', q.id, q.status,
                             coalesce(t.type || ' of ' || t.amount, 'missing'))
    FROM recharges q
    LEFT JOIN transactions t ON t.user_id = q.user_id AND t.id = q.transaction_id
    WHERE (q.status = 'fulfilled') <> (t.id IS NOT NULL)
       OR t.type <> 'PURCHASE' OR t.amount <> q.amount;
END $$;
