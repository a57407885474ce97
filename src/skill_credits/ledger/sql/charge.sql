-- The charge: POST /v1/charges, the hot path.
--
-- A charge that passes every check is two statements: the guarded UPDATE of the user's row
-- (the balance, the head it draws from, the log's counter) and the log insert. A user
-- with limits (the caller's hint, p_limited) takes the user's lock first, and the same
-- UPDATE checks the limits, which the charge is then counted in; under the lock that
-- statement's snapshot has every limit as the last write left it, so its check is exact.
-- The hint is only a hint: the UPDATE checks users.limited itself, a wrong hint costs
-- one statement that writes nothing, and the outcome's `limited` tells the caller the
-- truth. A charge the UPDATE does not write (a refusal, a head that cannot cover it,
-- something due) goes the slow way: the lock, the facts, the refusals in the contract's
-- order, the limits, the grants.

-- POST /v1/charges. The order of refusals: revoked key, replay, skill 404, version,
-- disabled, user 404, 402, 429. p_version NULL: any version. p_limited: what the caller
-- last saw of users.limited (the worker's hint); a wrong hint costs time, never money.
--
-- Two requests with one Idempotency-Key may both pass the statement's key check; the
-- second then fails on the unique index (transactions_idempotency) having written nothing,
-- and its caller calls again, which answers the first one's row as the replay.
CREATE OR REPLACE FUNCTION sc_charge(p_user text, p_skill text, p_version integer,
                                     p_units integer, p_description text, p_key text,
                                     p_hash bytea, p_api_key_id text,
                                     p_member text DEFAULT NULL,
                                     p_limited boolean DEFAULT false)
RETURNS sc_tx_outcome
LANGUAGE plpgsql
-- One plan for each statement, whatever the parameters: a custom plan folds away the
-- checks that a NULL key, a NULL API key or the hint switch off, so PL/pgSQL would judge
-- it cheaper and plan the statement again on every charge (it cost more than the charge).
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    r sc_tx_outcome;
    s skills;
    t transactions;
    facts record;
    v_known boolean;
    v_need bigint;
    v_now timestamptz;
    v_credits bigint;
    v_available bigint;
    v_below bigint;
    v_head uuid;
    v_head_free bigint;
    v_seq bigint;
    v_sources jsonb;
BEGIN
    -- The one guarded UPDATE of the user's row at the skill's price (the balance, the head
    -- it draws from, the log's counter), then the log row. A user with limits (as the
    -- caller last saw) takes the user's lock first, so that the statement's snapshot has
    -- every limit as the last write left it; the statement then also checks every limit
    -- that applies (none may go past its max_credits; a charge of 0 passes them all),
    -- and the charge is counted in them. It writes nothing on a refusal, a head that
    -- cannot cover the charge, something due or a wrong hint: the slow way says which.
    IF p_limited THEN
        PERFORM 1 FROM users WHERE user_id = p_user FOR UPDATE;
        v_now := clock_timestamp();
    END IF;
    UPDATE users u SET credits = u.credits - c.cost * p_units,
                       head_free = u.head_free - c.cost * p_units,
                       head_taken = u.head_taken + c.cost * p_units,
                       log_seq = u.log_seq + 1
    FROM skills c
    WHERE u.user_id = p_user
      AND c.name = p_skill AND c.is_active
      AND (p_version IS NULL OR c.version = p_version)
      AND u.head_free >= c.cost * p_units
      AND (u.next_due IS NULL OR u.next_due > now())
      AND u.limited = p_limited
      -- (the user's column, not the hint, guards the check: the row decides, at run time)
      AND (NOT u.limited OR NOT EXISTS (SELECT 1 FROM limits l
                                        WHERE l.user_id = p_user
                                          AND sc_applies(l.member, l.skill_id, p_member,
                                                         c.id)
                                          AND sc_spent(l.window_start, l.period, l.spent,
                                                       v_now)
                                              + c.cost * p_units > l.max_credits
                                          AND c.cost * p_units > 0))
      AND (p_key IS NULL OR NOT EXISTS (SELECT 1 FROM transactions x
                                        WHERE x.user_id = p_user
                                          AND x.idempotency_key = p_key))
      AND (p_api_key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys a
                                           WHERE a.id = p_api_key_id
                                             AND a.revoked_at IS NULL))
    RETURNING u.credits, u.head_grant, u.log_seq, u.credits - u.reserved, u.recharge_below,
              c.id, c.name, c.display_name, c.description, c.cost, c.is_active,
              c.version, c.created_at, c.updated_at
    INTO v_credits, v_head, v_seq, v_available, v_below,
         s.id, s.name, s.display_name, s.description, s.cost, s.is_active,
         s.version, s.created_at, s.updated_at;  -- every column of skills, in order
    IF FOUND THEN
        v_need := s.cost * p_units;
        IF p_limited AND v_need > 0 THEN
            PERFORM sc_count(p_user, p_member, s.id, v_need, v_now, v_now);
        END IF;
        INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, skill_id, skill,
                                  units, unit_cost, description, idempotency_key,
                                  request_hash, sources, member, created_at)
        VALUES (sc_id(p_user), v_seq, p_user, 'CONSUMPTION', -v_need, v_credits, s.id, s.name, p_units,
                s.cost, p_description, p_key, p_hash,
                CASE WHEN v_need = 0 THEN '[]'::jsonb
                     ELSE jsonb_build_array(jsonb_build_object('grant_id', v_head,
                                                               'amount', v_need)) END,
                p_member, coalesce(v_now, clock_timestamp()))
        RETURNING 'written', id::text, user_id, type, amount, balance_after, skill, units,
                  unit_cost, description, NULL, NULL, sources, created_at, request_hash,
                  s, NULL, NULL, NULL, NULL, member, NULL, p_limited
        INTO r;
        IF v_below IS NOT NULL AND v_available <= v_below AND v_need > 0 THEN
            PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
        END IF;
        RETURN r;
    END IF;

    -- The slow way: the user's lock, what was due written off, the head folded (a repeat
    -- that looked before its original committed sees it now), every fact the refusals
    -- need, in one query. A user with limits is checked against them after the 402, and
    -- counted once the charge is taken.
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
    r.outcome := sc_refusal(s, p_version, v_known);
    IF r.outcome IS NOT NULL THEN
        RETURN sc_skill_out(r, s);
    END IF;
    v_need := s.cost * p_units;
    IF facts.free < v_need THEN
        RETURN sc_skill_out(sc_short(p_user, v_need, NULL), s);
    END IF;
    IF facts.limited THEN
        v_now := clock_timestamp();
        r.lim := sc_over(p_user, p_member, s.id, v_need, v_now);
        IF r.lim IS NOT NULL THEN
            r.outcome := 'limited';
            r.required := v_need;
            RETURN sc_skill_out(r, s);
        END IF;
    END IF;

    -- Each grant in spending order takes what the ones before it left (sc_take); the
    -- balance drops by the whole; the new head is the first grant with credits left after
    -- the takes; the log row names every grant it drew from. The lock keeps the grants
    -- still.
    v_sources := sc_take(p_user, v_need, NULL, false);
    SELECT g.id, g.remaining - g.reserved INTO v_head, v_head_free
    FROM grants g
    WHERE g.user_id = p_user AND g.status = 'active' AND g.remaining > g.reserved
    ORDER BY g.priority, g.expires_at, g.created_at, g.id
    LIMIT 1;
    UPDATE users SET credits = credits - v_need, head_taken = 0, head_grant = v_head,
                     head_free = v_head_free, log_seq = log_seq + 1
    WHERE user_id = p_user
    RETURNING credits, log_seq, credits - reserved, recharge_below
    INTO v_credits, v_seq, v_available, v_below;
    -- a user with limits counts at the instant the limits were checked at
    v_now := CASE WHEN facts.limited THEN v_now ELSE clock_timestamp() END;
    INSERT INTO transactions (id, seq, user_id, type, amount, balance_after, skill_id, skill,
                              units, unit_cost, description, idempotency_key, request_hash,
                              sources, member, created_at)
    VALUES (sc_id(p_user), v_seq, p_user, 'CONSUMPTION', -v_need, v_credits, s.id, s.name, p_units, s.cost,
            p_description, p_key, p_hash, v_sources, p_member, v_now)
    RETURNING * INTO t;
    IF facts.limited THEN
        PERFORM sc_count(p_user, p_member, s.id, v_need, v_now, v_now);
    END IF;
    IF v_below IS NOT NULL AND v_available <= v_below AND v_need > 0 THEN
        PERFORM sc_recharge_ask(p_user);  -- auto-recharge (recharges.sql)
    END IF;
    r := sc_tx_out('written', t);
    r.sk := s;
    r.limited := facts.limited;
    RETURN r;
END $$;
