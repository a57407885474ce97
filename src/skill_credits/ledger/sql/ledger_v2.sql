-- The ledger's functions, version 2 (loaded by migration 0007 over ledger_v1.sql).
--
-- 1. A charge that passes every check is one statement: the guarded UPDATE of the user's
--    balance, the UPDATE of the grant it draws from and the log insert, in one CTE. Only
--    when that statement writes nothing does the function go on to v1's checks one by one
--    (under the user's lock) to find out why, or to finish a charge the first grant could
--    not cover alone.
--
--    The statement picks the first grant by its snapshot, which may predate the user's
--    lock. That is safe because every write that may add a grant or give one free credits
--    (credits, refunds, holds, captures, releases, expiry: all of them take sc_lock) bumps
--    users.grant_seq, and the statement's guard requires the grant_seq its snapshot saw: if
--    one of those writes committed in between, the guard fails on the locked row and the
--    function goes the slow way. Between two charges only remainders fall, so the grant the
--    snapshot saw first is still first, and its UPDATE re-checks what it has free.
--
-- 2. The CHECK constraints of users, grants and transactions become one each, calling an
--    IMMUTABLE PL/pgSQL function (sc_user_valid, sc_grant_valid, sc_transaction_valid) with
--    the same rules. PostgreSQL rebuilds every CHECK expression from its stored text for
--    each statement that writes the table (stringToNode, then the planner); that was a
--    fifth of the database's time per charge. A PL/pgSQL function is compiled once per
--    connection. The rules are still checked by PostgreSQL on every row written.

ALTER TABLE users RENAME COLUMN hold_seq TO grant_seq;

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
    p_user_id text, p_credits bigint, p_reserved bigint, p_low_balance_threshold bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (p_user_id ~ '^[A-Za-z0-9._:@-]{1,128}$') IS NOT FALSE
       AND (p_credits >= 0) IS NOT FALSE
       AND (p_reserved >= 0 AND p_reserved <= p_credits) IS NOT FALSE
       AND (p_low_balance_threshold >= 0) IS NOT FALSE;
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
        user_id, credits, reserved, low_balance_threshold)) NOT VALID;

-- Lock the user's row and write off what is due. False for an unknown user. Every write
-- but a charge's one statement comes here first, so this is where grant_seq moves.
CREATE OR REPLACE FUNCTION sc_lock(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
BEGIN
    UPDATE users SET grant_seq = grant_seq + 1 WHERE user_id = p_user
    RETURNING next_due INTO v_due;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        PERFORM sc_expire(p_user);
    END IF;
    RETURN true;
END $$;

-- Give a hold's reservations back to its grants and the user (the caller holds the lock).
CREATE OR REPLACE FUNCTION sc_unreserve(h holds) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE grants g SET reserved = g.reserved - (e ->> 'amount')::bigint
    FROM jsonb_array_elements(h.sources) e
    WHERE g.id = (e ->> 'grant_id')::uuid;
    UPDATE users SET reserved = reserved - h.amount WHERE user_id = h.user_id;
END $$;

-- POST /v1/holds (as in v1, without the hold_seq it no longer needs: sc_lock moves
-- grant_seq).
CREATE OR REPLACE FUNCTION sc_hold(p_user text, p_skill text, p_version integer,
                                   p_units integer, p_ttl integer, p_description text,
                                   p_key text, p_hash bytea)
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
    INSERT INTO holds (user_id, skill_id, skill, skill_version, units, unit_cost, amount,
                       description, expires_at, idempotency_key, request_hash, sources)
    VALUES (p_user, s.id, s.name, s.version, p_units, s.cost, v_need, p_description, v_until,
            p_key, p_hash, sc_take(p_user, v_need, v_until, true))
    RETURNING * INTO h;
    UPDATE users SET reserved = reserved + v_need, next_due = least(next_due, v_until)
    WHERE user_id = p_user;
    RETURN sc_skill_out(sc_hold_out('written', h), s);
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
    v_found boolean;
    v_need bigint;
    v_credits bigint;
    v_sources jsonb;
BEGIN
    WITH priced AS (
        SELECT c AS s FROM skills c
        WHERE c.name = p_skill AND c.is_active
          AND (p_version IS NULL OR c.version = p_version)
    ), bal AS (
        UPDATE users SET credits = users.credits - (priced.s).cost * p_units
        FROM priced
        WHERE users.user_id = p_user
          AND users.credits - users.reserved >= (priced.s).cost * p_units
          AND (users.next_due IS NULL OR users.next_due > now())
          AND users.grant_seq = (SELECT u0.grant_seq FROM users u0 WHERE u0.user_id = p_user)
          AND (p_key IS NULL OR NOT EXISTS (SELECT 1 FROM transactions x
                                            WHERE x.user_id = p_user
                                              AND x.idempotency_key = p_key))
          AND (p_api_key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys a
                                               WHERE a.id = p_api_key_id
                                                 AND a.revoked_at IS NULL))
        RETURNING users.credits, (priced.s).cost * p_units AS need, priced.s
    ), drawn AS (
        UPDATE grants SET remaining = grants.remaining - bal.need,
            status = CASE WHEN grants.remaining = bal.need THEN 'depleted'
                          ELSE grants.status END
        FROM bal
        WHERE bal.need > 0
          AND grants.id = (SELECT f.id FROM grants f
                           WHERE f.user_id = p_user AND f.status = 'active'
                             AND f.remaining > f.reserved
                           ORDER BY f.priority, f.expires_at, f.created_at, f.id LIMIT 1)
          AND grants.remaining - grants.reserved >= bal.need
        RETURNING grants.id
    ), logged AS (
        INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill,
                                  units, unit_cost, description, idempotency_key,
                                  request_hash, sources)
        SELECT p_user, 'CONSUMPTION', -bal.need, bal.credits, (bal.s).id, (bal.s).name,
               p_units, (bal.s).cost, p_description, p_key, p_hash,
               CASE WHEN drawn.id IS NULL THEN '[]'::jsonb
                    ELSE jsonb_build_array(jsonb_build_object('grant_id', drawn.id,
                                                              'amount', bal.need)) END
        FROM bal LEFT JOIN drawn ON true
        WHERE drawn.id IS NOT NULL OR bal.need = 0
        RETURNING *
    )
    SELECT 'written', l.id::text, l.user_id, l.type, l.amount, l.balance_after, l.skill,
           l.units, l.unit_cost, l.description, NULL, NULL, l.sources, l.created_at,
           l.request_hash, bal.s, bal.credits, NULL, bal.need, NULL
    INTO r FROM bal LEFT JOIN logged l ON true;
    IF FOUND THEN
        IF r.id IS NOT NULL THEN
            r.credits := NULL;
            r.required := NULL;
            RETURN r;
        END IF;
        -- The balance is taken, but the first grant did not cover it all: take it across
        -- the grants (a new statement sees each as it is now).
        v_sources := sc_take(p_user, r.required, NULL, false);
        INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill,
                                  units, unit_cost, description, idempotency_key,
                                  request_hash, sources)
        VALUES (p_user, 'CONSUMPTION', -r.required, r.credits, (r.sk).id, (r.sk).name,
                p_units, (r.sk).cost, p_description, p_key, p_hash, v_sources)
        RETURNING * INTO t;
        RETURN sc_skill_out(sc_tx_out('written', t), r.sk);
    END IF;

    -- Nothing written: find out why, in the contract's order.
    IF p_api_key_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM api_keys a WHERE a.id = p_api_key_id
                       AND a.revoked_at IS NULL) THEN
        r.outcome := 'key_revoked';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        -- a keyed request locks first, so a concurrent repeat finds this one's row
        v_found := sc_lock(p_user);
        t := sc_keyed(p_user, p_key);
        IF t.id IS NOT NULL THEN
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
    IF p_key IS NULL THEN
        v_found := sc_lock(p_user);
    END IF;
    IF NOT v_found THEN
        r.outcome := 'user_not_found';
        RETURN r;
    END IF;
    v_need := s.cost * p_units;
    -- Under the lock, with what was due written off: the balance, then the grants.
    UPDATE users SET credits = credits - v_need
    WHERE user_id = p_user AND credits - reserved >= v_need
    RETURNING credits INTO v_credits;
    IF NOT FOUND THEN
        RETURN sc_skill_out(sc_short(p_user, v_need, NULL), s);
    END IF;
    v_sources := sc_take(p_user, v_need, NULL, false);
    INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill, units,
                              unit_cost, description, idempotency_key, request_hash, sources)
    VALUES (p_user, 'CONSUMPTION', -v_need, v_credits, s.id, s.name, p_units, s.cost,
            p_description, p_key, p_hash, v_sources)
    RETURNING * INTO t;
    RETURN sc_skill_out(sc_tx_out('written', t), s);
END $$;
