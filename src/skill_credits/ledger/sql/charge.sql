-- The charge: POST /v1/charges, the hot path.
--
-- A charge that passes every check is one statement: the guarded UPDATE of the user's row
-- (the balance, and the head it draws from) and the log insert. A user with limits (the
-- caller's hint, p_limited) takes the user's lock and runs one statement that checks the
-- limits, takes from the head, counts in the limits and writes the log row; under the
-- lock that statement's snapshot has every limit as the last write left it, so its check
-- is exact. The hint is only a hint: the statements check users.limited themselves, a
-- wrong hint costs one statement that writes nothing, and the outcome's `limited` tells
-- the caller the truth. A charge neither statement writes (a refusal, a head that cannot
-- cover it, something due) goes the slow way: the lock, the facts, the refusals in the
-- contract's order, the limits, the grants.

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
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    s skills;
    t transactions;
    facts record;
    v_known boolean;
    v_limited boolean;
    v_due timestamptz;
    v_need bigint;
    v_now timestamptz;
BEGIN
    IF NOT p_limited THEN
        -- A user without limits: the one statement.
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
              AND NOT users.limited
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
                   p_member, clock_timestamp()
            FROM bal
            RETURNING *
        )
        SELECT 'written', l.id::text, l.user_id, l.type, l.amount, l.balance_after, l.skill,
               l.units, l.unit_cost, l.description, NULL, NULL, l.sources, l.created_at,
               l.request_hash, bal.s, NULL, NULL, NULL, NULL, l.member, NULL, false
        INTO r FROM bal, logged l;
        IF FOUND THEN
            RETURN r;
        END IF;
    ELSE
        -- A user with limits (as the caller last saw): the user's lock, and if nothing is
        -- due, one statement that checks every limit that applies (none may go past its
        -- max_credits; a charge of 0 passes them all), takes the charge from the head,
        -- counts it in those limits at v_now and writes the log row - or writes nothing
        -- (a refusal, or a head that cannot cover it: the slow way below says which).
        SELECT u.limited, u.next_due INTO v_limited, v_due
        FROM users u WHERE u.user_id = p_user
        FOR UPDATE;
        IF v_limited AND (v_due IS NULL OR v_due > now()) THEN
            v_now := clock_timestamp();
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
                  AND NOT EXISTS (SELECT 1 FROM limits l
                                  WHERE l.user_id = p_user
                                    AND sc_applies(l, p_member, (priced.s).id)
                                    AND sc_spent(l, v_now) + (priced.s).cost * p_units
                                        > l.max_credits
                                    AND (priced.s).cost * p_units > 0)
                  AND (p_key IS NULL OR NOT EXISTS (SELECT 1 FROM transactions x
                                                    WHERE x.user_id = p_user
                                                      AND x.idempotency_key = p_key))
                  AND (p_api_key_id IS NULL OR EXISTS (SELECT 1 FROM api_keys a
                                                       WHERE a.id = p_api_key_id
                                                         AND a.revoked_at IS NULL))
                RETURNING users.credits, users.head_grant, (priced.s).cost * p_units AS need,
                          priced.s
            ), counted AS (
                UPDATE limits l
                SET spent = sc_spent(l, v_now) + bal.need,
                    window_start = sc_window_start(l.period, v_now)
                FROM bal
                WHERE l.user_id = p_user AND sc_applies(l, p_member, (bal.s).id)
                  AND bal.need > 0
            ), logged AS (
                INSERT INTO transactions (user_id, type, amount, balance_after, skill_id,
                                          skill, units, unit_cost, description,
                                          idempotency_key, request_hash, sources, member,
                                          created_at)
                SELECT p_user, 'CONSUMPTION', -bal.need, bal.credits, (bal.s).id,
                       (bal.s).name, p_units, (bal.s).cost, p_description, p_key, p_hash,
                       CASE WHEN bal.need = 0 THEN '[]'::jsonb
                            ELSE jsonb_build_array(jsonb_build_object('grant_id',
                                                                      bal.head_grant,
                                                                      'amount', bal.need))
                       END,
                       p_member, v_now
                FROM bal
                RETURNING *
            )
            SELECT 'written', l.id::text, l.user_id, l.type, l.amount, l.balance_after,
                   l.skill, l.units, l.unit_cost, l.description, NULL, NULL, l.sources,
                   l.created_at, l.request_hash, bal.s, NULL, NULL, NULL, NULL, l.member,
                   NULL, true
            INTO r FROM bal, logged l;
            IF FOUND THEN
                RETURN r;
            END IF;
        END IF;
    END IF;

    -- The slow way: the user's lock, what was due written off, the head folded (a repeat
    -- that looked before its original committed sees it now), every fact the refusals
    -- need, in one query. A user with limits is checked against them after the 402, and
    -- the grants' walk below counts the charge in them.
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
    IF facts.limited THEN
        v_now := clock_timestamp();
        r.lim := sc_over(p_user, p_member, s.id, v_need, v_now);
        IF r.lim IS NOT NULL THEN
            r.outcome := 'limited';
            r.required := v_need;
            RETURN sc_skill_out(r, s);
        END IF;
    END IF;

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
    r.limited := facts.limited;
    RETURN r;
END $$;
