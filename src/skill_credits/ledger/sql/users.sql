-- The user's lock, and what falls due.
--
-- Every write locks the user's row before it reads or changes anything of the user's: that
-- serializes one user's writes, and every statement after the lock (a new snapshot each, in
-- READ COMMITTED) sees what the writes before it committed. Then it writes off what is due
-- (sc_expire: expired holds' reservations, expired grants' remainders), then does its work.
--
-- The head (users.head_grant, head_free, head_taken) is the grant a charge may draw from
-- without reading grants. Charges only ever draw from the head, so the grants stay exactly
-- as the log says once head_taken is folded into the head's row (sc_fold), which happens
-- under the lock: every write but a charge folds and clears the head first (sc_lock), so
-- it works on exact grant rows. Reads take no lock and fold nothing: they read the view
-- grants_now, in the same snapshot as the user's row.

-- sc_lock_keep, and the head cleared: for every write but a charge (it changes the grants).
CREATE OR REPLACE FUNCTION sc_lock(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT sc_lock_keep(p_user) THEN
        RETURN false;
    END IF;
    PERFORM sc_fold(p_user, true);
    RETURN true;
END $$;

-- Lock the user's row and write off what is due; False for an unknown user. Before what is
-- due is written off, the holds that expire stop counting in the limits (only a user with
-- limits has any to change). The head stays, folded.
CREATE OR REPLACE FUNCTION sc_lock_keep(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
    v_taken bigint;
    v_limited boolean;
    v_now timestamptz;
    h record;
BEGIN
    SELECT next_due, head_taken, limited INTO v_due, v_taken, v_limited
    FROM users WHERE user_id = p_user
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        IF v_limited THEN
            v_now := clock_timestamp();
            FOR h IN SELECT member, skill_id, amount, created_at FROM holds
                     WHERE user_id = p_user AND status = 'held' AND expires_at <= now()
            LOOP
                PERFORM sc_count(p_user, h.member, h.skill_id, -h.amount, h.created_at, v_now);
            END LOOP;
        END IF;
        PERFORM sc_fold(p_user, true);
        PERFORM sc_expire(p_user);
    ELSIF v_taken > 0 THEN
        PERFORM sc_fold(p_user, false);
    END IF;
    RETURN true;
END $$;

-- For reads: write off what is due (taking the lock only then). False for an unknown
-- user. The head stays: reads see it through grants_now.
CREATE OR REPLACE FUNCTION sc_touch(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
BEGIN
    SELECT next_due INTO v_due FROM users WHERE user_id = p_user;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        RETURN sc_lock_keep(p_user);
    END IF;
    RETURN true;
END $$;

-- Fold what charges took from the head into its row, for a user the caller has locked;
-- p_clear: the head is cleared too (the caller is about to change the grants).
CREATE OR REPLACE FUNCTION sc_fold(p_user text, p_clear boolean) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_head uuid;
    v_taken bigint;
BEGIN
    SELECT head_grant, head_taken INTO v_head, v_taken FROM users WHERE user_id = p_user;
    IF v_taken > 0 THEN
        UPDATE grants SET remaining = remaining - v_taken,
                          status = CASE WHEN remaining = v_taken THEN 'depleted'
                                        ELSE status END
        WHERE user_id = p_user AND id = v_head;
    END IF;
    IF v_taken > 0 OR (p_clear AND v_head IS NOT NULL) THEN
        UPDATE users SET head_taken = 0,
                         head_grant = CASE WHEN p_clear THEN NULL ELSE head_grant END,
                         head_free = CASE WHEN p_clear THEN NULL ELSE head_free END
        WHERE user_id = p_user;
    END IF;
END $$;

-- Write off what is due for a user whose row the caller has locked: top-up requests
-- pending for 24 hours expire (recharges.sql), holds past expires_at
-- give their reservations back, then each active grant past expires_at is written off by
-- one EXPIRY row (its remainder, sources = that grant). A grant is only ever written off
-- here, under the user's lock, and leaves 'active' as it is: exactly once.
CREATE OR REPLACE FUNCTION sc_expire(p_user text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
    v_released bigint;
    v_sources jsonb;
    v_credits bigint;
    v_seq bigint;
    v_due timestamptz;
    v_available bigint;
    v_below bigint;
BEGIN
    -- a top-up asked 24 hours ago and still pending no longer blocks the next one
    UPDATE recharges SET status = 'expired', resolved_at = expires_at
    WHERE user_id = p_user AND status = 'pending' AND expires_at <= now();
    IF FOUND THEN
        PERFORM sc_recharge_rearm(p_user);
    END IF;
    SELECT coalesce(sum(amount), 0), jsonb_agg(sources) INTO v_released, v_sources
    FROM holds WHERE user_id = p_user AND status = 'held' AND expires_at <= now();
    IF v_sources IS NOT NULL THEN
        UPDATE holds SET status = 'expired', resolved_at = expires_at
        WHERE user_id = p_user AND status = 'held' AND expires_at <= now();
        -- every expired hold's sources, as one list
        PERFORM sc_unreserve(p_user, (SELECT coalesce(jsonb_agg(e), '[]'::jsonb)
                                      FROM jsonb_array_elements(v_sources) s,
                                           jsonb_array_elements(s) e));
        UPDATE users SET reserved = reserved - v_released WHERE user_id = p_user;
    END IF;

    FOR g IN
        SELECT id, remaining FROM grants
        WHERE user_id = p_user AND status = 'active' AND expires_at <= now()
        ORDER BY expires_at, priority, created_at, id
    LOOP
        UPDATE grants SET remaining = 0, status = 'expired'
        WHERE user_id = p_user AND id = g.id;
        UPDATE users SET credits = credits - g.remaining, log_seq = log_seq + 1
        WHERE user_id = p_user
        RETURNING credits, log_seq, credits - reserved, recharge_below
        INTO v_credits, v_seq, v_available, v_below;
        INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, sources)
        VALUES (sc_id(p_user), v_seq, p_user, 'EXPIRY', -g.remaining, v_credits,
                jsonb_build_array(jsonb_build_object('grant_id', g.id, 'amount', g.remaining)));
        IF v_below IS NOT NULL AND v_available <= v_below AND g.remaining > 0 THEN
            PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
        END IF;
    END LOOP;

    v_due := sc_next_due(p_user);
    UPDATE users SET next_due = v_due WHERE user_id = p_user;
END $$;

-- The earliest instant something of the user's falls due: an active grant's, a held
-- hold's or a pending top-up request's expiry (NULL: never).
CREATE OR REPLACE FUNCTION sc_next_due(p_user text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN least(
        (SELECT min(g.expires_at) FROM grants g
         WHERE g.user_id = p_user AND g.status = 'active'),
        (SELECT min(h.expires_at) FROM holds h
         WHERE h.user_id = p_user AND h.status = 'held'),
        (SELECT min(q.expires_at) FROM recharges q
         WHERE q.user_id = p_user AND q.status = 'pending'));
END $$;

-- For the worker: the users with something due (touch each in its own transaction).
CREATE OR REPLACE FUNCTION sc_due_users(p_limit integer) RETURNS SETOF text
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    SELECT user_id FROM users WHERE next_due <= now() ORDER BY next_due LIMIT p_limit;
END $$;

-- GET /v1/users/{id}: written off first, then read (the grants as grants_now, in the same
-- snapshot as the user's row). No row for an unknown user.
CREATE OR REPLACE FUNCTION sc_user(p_user text)
RETURNS TABLE (user_id text, credits bigint, reserved bigint, available bigint, paid bigint,
               promotional bigint, created_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT sc_touch(p_user) THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT u.user_id, u.credits, u.reserved, u.credits - u.reserved,
           (SELECT coalesce(sum(g.remaining), 0) FROM grants_now g
            WHERE g.user_id = p_user AND g.status = 'active' AND g.category = 'paid')::bigint,
           (SELECT coalesce(sum(g.remaining), 0) FROM grants_now g
            WHERE g.user_id = p_user AND g.status = 'active'
              AND g.category = 'promotional')::bigint,
           u.created_at
    FROM users u WHERE u.user_id = p_user;
END $$;

-- The user's transaction written under an Idempotency-Key (NULL when there is none). The
-- strict "=" implies the partial unique index's predicate (keyed rows only), so even a
-- generic plan can use that index.
CREATE OR REPLACE FUNCTION sc_keyed(p_user text, p_key text) RETURNS transactions
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t transactions;
BEGIN
    SELECT * INTO t FROM transactions WHERE user_id = p_user AND idempotency_key = p_key;
    RETURN t;
END $$;

-- What a write of the log answers before it writes anything, in the contract's order:
-- p_refusal (the request names what does not exist), else the replay of the user's row
-- written under the Idempotency-Key p_key, else an outcome without one: write.
CREATE OR REPLACE FUNCTION sc_answer(p_user text, p_key text, p_refusal text)
RETURNS sc_tx_outcome
LANGUAGE plpgsql STABLE AS $$
DECLARE
    t transactions;
    r sc_tx_outcome;
BEGIN
    r.outcome := p_refusal;
    IF r.outcome IS NULL AND p_key IS NOT NULL THEN
        t := sc_keyed(p_user, p_key);
        IF t.id IS NOT NULL THEN
            RETURN sc_tx_out('replay', t);
        END IF;
    END IF;
    RETURN r;
END $$;
