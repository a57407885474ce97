-- Money in and back: top-ups, grants and adjustments (sc_credit), and refunds.

-- POST /v1/users/{id}/credits. Positive: creates the user if new and makes a grant (the
-- transaction names it in grant_id). Negative (ADJUSTMENT): draws in spending order; 404
-- for an unknown user, 402 when the free credits are short. A replay comes first.
CREATE OR REPLACE FUNCTION sc_credit(p_user text, p_type text, p_amount bigint,
                                     p_description text, p_key text, p_hash bytea,
                                     p_expires_at timestamptz, p_priority integer,
                                     p_category text)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    t transactions;
    v_known boolean;
    v_grant uuid;
    v_credits bigint;
    v_seq bigint;
    v_sources jsonb;
    v_available bigint;
    v_below bigint;
BEGIN
    v_known := sc_lock(p_user);
    IF NOT v_known AND p_amount > 0 THEN
        INSERT INTO users (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
        v_known := sc_lock(p_user);
    END IF;
    r := sc_answer(p_user, p_key, CASE WHEN NOT v_known THEN 'user_not_found' END);
    IF r.outcome IS NOT NULL THEN
        RETURN r;
    END IF;
    IF p_amount > 0 THEN
        -- the grant the credit makes, named by its log row
        v_grant := skill_credits_uuid_v7();
        v_sources := '[]'::jsonb;
    ELSE
        IF NOT EXISTS (SELECT 1 FROM users WHERE user_id = p_user
                       AND credits - reserved >= -p_amount) THEN
            RETURN sc_short(p_user, -p_amount, NULL);
        END IF;
        v_sources := sc_take(p_user, -p_amount, NULL, false);
    END IF;
    UPDATE users SET credits = credits + p_amount,
                     next_due = least(next_due, CASE WHEN p_amount > 0 THEN p_expires_at END),
                     log_seq = log_seq + 1
    WHERE user_id = p_user
    RETURNING credits, log_seq, credits - reserved, recharge_below
    INTO v_credits, v_seq, v_available, v_below;
    INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, description,
                              idempotency_key, request_hash, grant_id, sources)
    VALUES (sc_id(p_user), v_seq, p_user, p_type, p_amount, v_credits, p_description, p_key, p_hash,
            v_grant, v_sources)
    RETURNING * INTO t;
    IF v_below IS NOT NULL AND v_available <= v_below AND p_amount < 0 THEN
        PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
    END IF;
    IF v_grant IS NOT NULL THEN
        INSERT INTO grants (id, user_id, transaction_id, category, priority, amount,
                            remaining, expires_at)
        VALUES (v_grant, p_user, t.id,
                coalesce(p_category,
                         CASE WHEN p_type = 'GRANT' THEN 'promotional' ELSE 'paid' END),
                coalesce(p_priority, 50), p_amount, p_amount, p_expires_at);
    END IF;
    RETURN sc_tx_out('written', t);
END $$;

-- POST /v1/transactions/{id}/refund: the credits go back to the grants the charge drew
-- from that still live; the parts whose grant lapsed meanwhile are written off at once by
-- an EXPIRY row. The limits stop counting what it refunds if the charge counted in the
-- current window (a capture counted when its hold was made).
CREATE OR REPLACE FUNCTION sc_refund(p_user text, p_tx uuid, p_description text, p_key text,
                                     p_hash bytea)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    o transactions;
    t transactions;
    part record;
    v_sources jsonb;
    v_lapsed jsonb := '[]'::jsonb;
    v_lapsed_total bigint := 0;
    v_credits bigint;
    v_seq bigint;
    v_due timestamptz;
    v_counted_at timestamptz;
    v_available bigint;
    v_below bigint;
BEGIN
    IF sc_lock(p_user) THEN
        SELECT * INTO o FROM transactions WHERE user_id = p_user AND id = p_tx;
    END IF;
    r := sc_answer(p_user, p_key, CASE WHEN o.id IS NULL THEN 'not_found' END);
    IF r.outcome IS NOT NULL THEN
        RETURN r;
    END IF;
    IF o.type <> 'CONSUMPTION' THEN
        r := sc_tx_out('not_refundable', o);
        RETURN r;
    END IF;
    IF EXISTS (SELECT 1 FROM transactions x WHERE x.user_id = p_user AND x.refund_of = o.id)
    THEN
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
    FOR part IN
        SELECT (e ->> 'grant_id')::uuid AS grant_id, (e ->> 'amount')::bigint AS amount
        FROM jsonb_array_elements(v_sources) WITH ORDINALITY AS x(e, n) ORDER BY n
    LOOP
        UPDATE grants SET remaining = remaining + part.amount, status = 'active'
        WHERE user_id = p_user AND id = part.grant_id AND status <> 'expired'
          AND (expires_at IS NULL OR expires_at > now());
        IF NOT FOUND THEN
            UPDATE grants SET status = 'expired'
            WHERE user_id = p_user AND id = part.grant_id
              AND (status = 'expired' OR expires_at <= now());
            IF FOUND THEN
                v_lapsed := v_lapsed || jsonb_build_object('grant_id', part.grant_id,
                                                           'amount', part.amount);
                v_lapsed_total := v_lapsed_total + part.amount;
            END IF;
        END IF;
    END LOOP;
    SELECT min(g.expires_at) INTO v_due
    FROM grants g
    WHERE g.user_id = p_user AND g.status = 'active'
      AND g.id IN (SELECT (e ->> 'grant_id')::uuid FROM jsonb_array_elements(v_sources) e);
    UPDATE users SET credits = credits - o.amount, next_due = least(next_due, v_due),
                     log_seq = log_seq + 1
    WHERE user_id = p_user
    RETURNING credits, log_seq INTO v_credits, v_seq;
    INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, refund_of,
                              description, idempotency_key, request_hash, sources)
    VALUES (sc_id(p_user), v_seq, p_user, 'REFUND', -o.amount, v_credits, o.id, p_description, p_key, p_hash,
            coalesce(v_sources, '[]'::jsonb))
    RETURNING * INTO t;
    SELECT h.created_at INTO v_counted_at
    FROM holds h WHERE h.user_id = p_user AND h.transaction_id = o.id;
    PERFORM sc_count(p_user, o.member, o.skill_id, o.amount,
                     coalesce(v_counted_at, o.created_at), clock_timestamp());
    IF v_lapsed_total > 0 THEN
        UPDATE users SET credits = credits - v_lapsed_total, log_seq = log_seq + 1
        WHERE user_id = p_user
        RETURNING credits, log_seq, credits - reserved, recharge_below
        INTO v_credits, v_seq, v_available, v_below;
        INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, sources)
        VALUES (sc_id(p_user), v_seq, p_user, 'EXPIRY', -v_lapsed_total, v_credits, v_lapsed);
        IF v_below IS NOT NULL AND v_available <= v_below THEN
            PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
        END IF;
    END IF;
    RETURN sc_tx_out('written', t);
END $$;
