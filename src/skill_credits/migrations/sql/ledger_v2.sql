-- The ledger's functions, version 2 (loaded by migration 0007 over ledger_v1.sql).
--
-- 1. A charge that passes every check is one statement again, the shape it had before
--    grants: the guarded UPDATE of the user's row and the log insert. The grant it draws
--    from is booked in that same UPDATE, on the user's row: users.head_grant is the grant
--    a charge may draw from without reading grants (the first in spending order with free
--    credits), head_free what it has free for charges, head_taken what charges took from
--    it that its own row does not show yet. Charges only ever draw from the head, so the
--    grants stay exactly as the log says once head_taken is folded into the head's row.
--
--    Folding (sc_fold) happens under the user's lock: every other write folds and clears
--    the head first (sc_lock), so it works on exact grant rows. Reads take no lock and
--    fold nothing: they read the view grants_now, which is the grants less what the head
--    has taken, in the same snapshot as the user's row. A charge that finds no head, or
--    a head that cannot cover it, goes v1's way (its checks one by one; a write under
--    the lock) and makes the first grant with free credits the head again.
--
-- 2. The CHECK constraints of users, grants and transactions become one each, calling an
--    IMMUTABLE PL/pgSQL function (sc_user_valid, sc_grant_valid, sc_transaction_valid) with
--    the same rules. PostgreSQL rebuilds every CHECK expression from its stored text for
--    each statement that writes the table (stringToNode, then the planner); that was a
--    fifth of the database's time per charge. A PL/pgSQL function is compiled once per
--    connection. The rules are still checked by PostgreSQL on every row written.

-- (users.hold_seq guarded the statements of before grants; v1's sc_hold and sc_unreserve
-- still move it, and nothing reads it.)
ALTER TABLE users
    ADD COLUMN head_grant uuid,
    ADD COLUMN head_free bigint,
    ADD COLUMN head_taken bigint NOT NULL DEFAULT 0;

-- The grants as a read must show them: the head less what charges took from it (and
-- depleted when that is all it had).
CREATE VIEW grants_now AS
SELECT g.id, g.user_id, g.transaction_id, g.category, g.priority, g.amount,
       g.remaining - coalesce(u.head_taken, 0) AS remaining, g.reserved, g.expires_at,
       CASE WHEN g.status = 'active' AND g.remaining = coalesce(u.head_taken, 0)
            THEN 'depleted' ELSE g.status END AS status,
       g.created_at
FROM grants g
LEFT JOIN users u ON u.user_id = g.user_id AND u.head_grant = g.id;

-- One per rule, each true (or unknown) as the CHECK it replaces was.
CREATE FUNCTION sc_transaction_valid(
    p_type text, p_amount bigint, p_balance_after bigint, p_skill_id uuid, p_units integer,
    p_unit_cost bigint, p_description text, p_idempotency_key text, p_refund_of uuid)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (p_type IN ('CONSUMPTION', 'PURCHASE', 'GRANT', 'REFUND', 'ADJUSTMENT', 'EXPIRY'))
               IS NOT FALSE
       AND (CASE p_type WHEN 'PURCHASE' THEN p_amount > 0
                        WHEN 'GRANT' THEN p_amount > 0
                        WHEN 'CONSUMPTION' THEN p_amount <= 0
                        WHEN 'REFUND' THEN p_amount >= 0
                        WHEN 'ADJUSTMENT' THEN p_amount <> 0
                        WHEN 'EXPIRY' THEN p_amount < 0
                        ELSE false END) IS NOT FALSE
       AND (p_balance_after >= 0) IS NOT FALSE
       AND (p_units BETWEEN 1 AND 1000000) IS NOT FALSE
       AND (p_unit_cost >= 0) IS NOT FALSE
       AND (char_length(p_description) <= 500) IS NOT FALSE
       AND (char_length(p_idempotency_key) BETWEEN 1 AND 255) IS NOT FALSE
       AND ((p_type = 'CONSUMPTION') = (p_skill_id IS NOT NULL AND p_units IS NOT NULL
                                        AND p_unit_cost IS NOT NULL)) IS NOT FALSE
       AND (p_type <> 'CONSUMPTION' OR p_amount = -(p_units * p_unit_cost)) IS NOT FALSE
       AND ((p_type = 'REFUND') = (p_refund_of IS NOT NULL)) IS NOT FALSE;
END $$;

CREATE FUNCTION sc_grant_valid(
    p_category text, p_priority smallint, p_amount bigint, p_remaining bigint,
    p_reserved bigint, p_status text)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (p_category IN ('paid', 'promotional')) IS NOT FALSE
       AND (p_priority BETWEEN 0 AND 100) IS NOT FALSE
       AND (p_amount >= 0) IS NOT FALSE
       AND (p_remaining >= 0) IS NOT FALSE
       AND (p_reserved >= 0 AND p_reserved <= p_remaining) IS NOT FALSE
       AND (p_status IN ('active', 'depleted', 'expired')) IS NOT FALSE
       AND ((p_status = 'active') = (p_remaining > 0)) IS NOT FALSE;
END $$;

CREATE FUNCTION sc_user_valid(
    p_user_id text, p_credits bigint, p_reserved bigint, p_low_balance_threshold bigint,
    p_head_free bigint, p_head_taken bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (p_user_id ~ '^[A-Za-z0-9._:@-]{1,128}$') IS NOT FALSE
       AND (p_credits >= 0) IS NOT FALSE
       AND (p_reserved >= 0 AND p_reserved <= p_credits) IS NOT FALSE
       AND (p_low_balance_threshold >= 0) IS NOT FALSE
       AND (p_head_free >= 0 AND p_head_free <= p_credits - p_reserved) IS NOT FALSE
       AND (p_head_taken >= 0) IS NOT FALSE;
END $$;

-- The old rows met the same rules; the migration validates the new constraints after this
-- file has committed, so the scan of a large log holds no lock that stops charges.
ALTER TABLE transactions
    DROP CONSTRAINT transactions_type_check,
    DROP CONSTRAINT transactions_sign,
    DROP CONSTRAINT transactions_balance_after_check,
    DROP CONSTRAINT transactions_units_check,
    DROP CONSTRAINT transactions_unit_cost_check,
    DROP CONSTRAINT transactions_description_check,
    DROP CONSTRAINT transactions_idempotency_key_check,
    DROP CONSTRAINT transactions_consumption_fields,
    DROP CONSTRAINT transactions_consumption_amount,
    DROP CONSTRAINT transactions_refund_fields,
    ADD CONSTRAINT transactions_valid CHECK (sc_transaction_valid(
        type, amount, balance_after, skill_id, units, unit_cost, description,
        idempotency_key, refund_of)) NOT VALID;

ALTER TABLE grants
    DROP CONSTRAINT grants_category_check,
    DROP CONSTRAINT grants_priority_check,
    DROP CONSTRAINT grants_amount_check,
    DROP CONSTRAINT grants_remaining_check,
    DROP CONSTRAINT grants_reserved_range,
    DROP CONSTRAINT grants_status_check,
    DROP CONSTRAINT grants_active_holds_credits,
    ADD CONSTRAINT grants_valid CHECK (sc_grant_valid(
        category, priority, amount, remaining, reserved, status)) NOT VALID;

ALTER TABLE users
    DROP CONSTRAINT users_user_id_check,
    DROP CONSTRAINT users_credits_nonnegative,
    DROP CONSTRAINT users_reserved_range,
    DROP CONSTRAINT users_low_balance_threshold_check,
    ADD CONSTRAINT users_valid CHECK (sc_user_valid(
        user_id, credits, reserved, low_balance_threshold, head_free, head_taken)) NOT VALID;

-- Fold what charges took from the head into its row, for a user the caller has locked;
-- p_clear: the head is cleared too (the caller is about to change the grants).
CREATE FUNCTION sc_fold(p_user text, p_clear boolean) RETURNS void
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
        WHERE id = v_head;
    END IF;
    IF v_taken > 0 OR (p_clear AND v_head IS NOT NULL) THEN
        UPDATE users SET head_taken = 0,
                         head_grant = CASE WHEN p_clear THEN NULL ELSE head_grant END,
                         head_free = CASE WHEN p_clear THEN NULL ELSE head_free END
        WHERE user_id = p_user;
    END IF;
END $$;

-- Lock the user's row, fold the head into its grant and write off what is due (which
-- clears the head: expiry changes the grants). False for an unknown user. The head stays
-- otherwise: for reads, and for a charge that may write nothing (it clears the head when
-- it writes).
CREATE FUNCTION sc_lock_keep(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
    v_taken bigint;
BEGIN
    SELECT next_due, head_taken INTO v_due, v_taken FROM users WHERE user_id = p_user
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        PERFORM sc_fold(p_user, true);
        PERFORM sc_expire(p_user);
    ELSIF v_taken > 0 THEN
        PERFORM sc_fold(p_user, false);
    END IF;
    RETURN true;
END $$;

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

-- POST /v1/charges. The one statement first (see the header); when it wrote nothing, the
-- refusals in the contract's order: revoked key, replay, skill 404, version (the caller's
-- cached version is behind: it runs again at the one returned), disabled, user 404, 402.
-- p_version NULL: any version.
--
-- Two requests with one Idempotency-Key may both pass the statement's key check; the
-- second then fails on the unique index (transactions_idempotency) having written nothing,
-- and its caller calls again, which answers the first one's row as the replay.
CREATE OR REPLACE FUNCTION sc_charge(p_user text, p_skill text, p_version integer,
                                     p_units integer, p_description text, p_key text,
                                     p_hash bytea, p_api_key_id text)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    s skills;
    t transactions;
    v_need bigint;
    v_credits bigint;
    v_sources jsonb;
BEGIN
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
                                  request_hash, sources)
        SELECT p_user, 'CONSUMPTION', -bal.need, bal.credits, (bal.s).id, (bal.s).name,
               p_units, (bal.s).cost, p_description, p_key, p_hash,
               CASE WHEN bal.need = 0 THEN '[]'::jsonb
                    ELSE jsonb_build_array(jsonb_build_object('grant_id', bal.head_grant,
                                                              'amount', bal.need)) END
        FROM bal
        RETURNING *
    )
    SELECT 'written', l.id::text, l.user_id, l.type, l.amount, l.balance_after, l.skill,
           l.units, l.unit_cost, l.description, NULL, NULL, l.sources, l.created_at,
           l.request_hash, bal.s, NULL, NULL, NULL, NULL
    INTO r FROM bal, logged l;
    IF FOUND THEN
        RETURN r;
    END IF;

    -- Nothing written: find out why, in the contract's order.
    IF p_api_key_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM api_keys a WHERE a.id = p_api_key_id
                       AND a.revoked_at IS NULL) THEN
        r.outcome := 'key_revoked';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        SELECT * INTO t FROM transactions WHERE user_id = p_user AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN sc_tx_out('replay', t);
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
    IF NOT sc_lock_keep(p_user) THEN
        r.outcome := 'user_not_found';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        -- a repeat that looked before the original committed looks again under the lock
        SELECT * INTO t FROM transactions WHERE user_id = p_user AND idempotency_key = p_key;
        IF FOUND THEN
            RETURN sc_tx_out('replay', t);
        END IF;
    END IF;
    v_need := s.cost * p_units;
    -- Under the lock, with what was due written off and the head folded: the balance, the
    -- grants in spending order, then the balance and the head again in one UPDATE.
    IF NOT EXISTS (SELECT 1 FROM users WHERE user_id = p_user
                   AND credits - reserved >= v_need) THEN
        RETURN sc_skill_out(sc_short(p_user, v_need, NULL), s);
    END IF;
    v_sources := sc_take(p_user, v_need, NULL, false);
    UPDATE users SET credits = credits - v_need, head_taken = 0,
                     (head_grant, head_free) = (
                         SELECT g.id, g.remaining - g.reserved FROM grants g
                         WHERE g.user_id = p_user AND g.status = 'active'
                           AND g.remaining > g.reserved
                         ORDER BY g.priority, g.expires_at, g.created_at, g.id LIMIT 1)
    WHERE user_id = p_user
    RETURNING credits INTO v_credits;
    INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill, units,
                              unit_cost, description, idempotency_key, request_hash, sources)
    VALUES (p_user, 'CONSUMPTION', -v_need, v_credits, s.id, s.name, p_units, s.cost,
            p_description, p_key, p_hash, v_sources)
    RETURNING * INTO t;
    r := sc_tx_out('written', t);
    r.sk := s;
    RETURN r;
END $$;

-- Every way the grants disagree with the log, the holds and the balances (for reconcile),
-- on the grants as reads see them (grants_now).
CREATE OR REPLACE FUNCTION sc_grant_problems()
RETURNS TABLE (user_id text, grant_id text, problem text)
LANGUAGE sql STABLE AS $$
    WITH moved AS (
        SELECT (e ->> 'grant_id')::uuid AS grant_id,
               sum(sign(t.amount) * (e ->> 'amount')::bigint)::bigint AS net
        FROM transactions t, jsonb_array_elements(t.sources) e GROUP BY 1
    ), held AS (
        SELECT (e ->> 'grant_id')::uuid AS grant_id, sum((e ->> 'amount')::bigint) AS amount
        FROM holds h, jsonb_array_elements(h.sources) e
        WHERE h.status = 'held' GROUP BY 1
    )
    SELECT g.user_id, g.id::text,
           format('remaining %s but amount %s and the log''s sources give %s',
                  g.remaining, g.amount, g.amount + coalesce(m.net, 0))
    FROM grants_now g LEFT JOIN moved m ON m.grant_id = g.id
    WHERE g.remaining <> g.amount + coalesce(m.net, 0)
    UNION ALL
    SELECT g.user_id, g.id::text,
           format('reserved %s but remaining %s and live holds set aside %s',
                  g.reserved, g.remaining, coalesce(h.amount, 0))
    FROM grants_now g LEFT JOIN held h ON h.grant_id = g.id
    WHERE g.reserved < 0 OR g.reserved > g.remaining OR g.reserved <> coalesce(h.amount, 0)
    UNION ALL
    SELECT u.user_id, NULL,
           format('credits %s, reserved %s but the grants hold %s, reserve %s',
                  u.credits, u.reserved, coalesce(sum(g.remaining), 0),
                  coalesce(sum(g.reserved), 0))
    FROM users u LEFT JOIN grants_now g ON g.user_id = u.user_id AND g.status <> 'expired'
    GROUP BY u.user_id, u.credits, u.reserved
    HAVING u.credits <> coalesce(sum(g.remaining), 0)
        OR u.reserved <> coalesce(sum(g.reserved), 0)
    UNION ALL
    SELECT u.user_id, u.head_grant::text,
           format('the head has %s free for charges but %s in its grant',
                  u.head_free, g.remaining - g.reserved)
    FROM users u JOIN grants_now g ON g.id = u.head_grant
    WHERE u.head_free > g.remaining - g.reserved
    UNION ALL
    SELECT t.user_id, NULL,
           format('transaction %s of %s has sources summing to %s', t.id, t.amount,
                  (SELECT coalesce(sum((e ->> 'amount')::bigint), 0)
                   FROM jsonb_array_elements(t.sources) e))
    FROM transactions t
    WHERE t.sources <> '[]'::jsonb
      AND abs(t.amount) <> (SELECT coalesce(sum((e ->> 'amount')::bigint), 0)
                            FROM jsonb_array_elements(t.sources) e)
$$;

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

-- sc_take as in v1 without its one-grant shortcut: charges that one grant covers no longer
-- come here (the head does), so the shortcut was a statement that failed before the walk.
CREATE OR REPLACE FUNCTION sc_take(p_user text, p_need bigint, p_until timestamptz,
                                   p_reserve boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_sources jsonb;
    v_total bigint;
BEGIN
    IF p_need = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    -- each grant takes what the ones before it left
    WITH o AS (
        SELECT f.id, f.remaining - f.reserved AS free,
               sum(f.remaining - f.reserved) OVER w AS upto, row_number() OVER w AS n
        FROM grants f
        WHERE f.user_id = p_user AND f.status = 'active' AND f.remaining > f.reserved
          AND (p_until IS NULL OR f.expires_at IS NULL OR f.expires_at >= p_until)
        WINDOW w AS (ORDER BY f.priority, f.expires_at, f.created_at, f.id)
    ), d AS (
        SELECT o.id, o.n, least(o.free, p_need - (o.upto - o.free)) AS take
        FROM o WHERE o.upto - o.free < p_need
    ), u AS (
        UPDATE grants g
        SET remaining = g.remaining - CASE WHEN p_reserve THEN 0 ELSE d.take END,
            reserved = g.reserved + CASE WHEN p_reserve THEN d.take ELSE 0 END,
            status = CASE WHEN NOT p_reserve AND g.remaining = d.take THEN 'depleted'
                          ELSE g.status END
        FROM d WHERE g.id = d.id
        RETURNING g.id, d.take, d.n
    )
    SELECT jsonb_agg(jsonb_build_object('grant_id', u.id, 'amount', u.take) ORDER BY u.n),
           sum(u.take)
    INTO v_sources, v_total FROM u;
    IF v_total IS DISTINCT FROM p_need THEN
        RAISE EXCEPTION 'grants of % cover % of %', p_user, coalesce(v_total, 0), p_need;
    END IF;
    RETURN v_sources;
END $$;
