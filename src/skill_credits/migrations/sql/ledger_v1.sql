-- The ledger's writes as database functions (loaded by migration 0006).
--
-- One function per write, the user id first. Each touches only that user's rows (users,
-- grants, transactions, holds) plus the read-only skills catalogue and api_keys, so it can
-- run whole on the node that owns the user once the ledger is distributed by user.
--
-- Every write locks the user's row before it reads or changes anything of the user's: that
-- serializes one user's writes, and every statement after the lock (a new snapshot each, in
-- READ COMMITTED) sees what the writes before it committed. Then it writes off what is due
-- (sc_expire: expired holds' reservations, expired grants' remainders), then does its work,
-- and returns its outcome: 'written', or which check refused it with the facts the answer
-- needs. The order of the checks is the contract's order of refusals; nothing else decides it.
--
-- Invariants the functions keep (reconcile checks them):
--   grants.status = 'active' exactly when remaining > 0; expired and depleted grants hold 0;
--   0 <= grants.reserved <= grants.remaining (what live holds set aside in the grant);
--   users.credits = sum(remaining) and users.reserved = sum(reserved) over the user's grants;
--   users.next_due <= the earliest expires_at of the user's active grants and held holds
--   (NULL: nothing ever expires), so a user with nothing due skips the expiry scan.
-- Because of those, credits - reserved is what a charge may take, and a charge whose guarded
-- UPDATE of users succeeds always finds the credits in the grants (sc_take).
--
-- A later change to a function is a new file (ledger_v2.sql, CREATE OR REPLACE) and a new
-- migration that loads it.

CREATE TYPE sc_tx_outcome AS (
    outcome         text,   -- written, replay, key_revoked, skill_not_found, version,
                            -- skill_disabled, user_not_found, insufficient, not_found,
                            -- not_refundable, already_refunded, hold_not_found, hold_not_active
    id              text,
    user_id         text,
    type            text,
    amount          bigint,
    balance_after   bigint,
    skill           text,
    units           integer,
    unit_cost       bigint,
    description     text,
    refund_of       text,
    grant_id        text,
    sources         jsonb,
    created_at      timestamptz,
    request_hash    bytea,
    sk              skills, -- the skill, when the answer names it
    credits         bigint,
    available       bigint,
    required        bigint,
    hold_status     text
);

CREATE TYPE sc_hold_outcome AS (
    outcome         text,   -- written, replay, skill_not_found, version, skill_disabled,
                            -- user_not_found, insufficient, hold_not_found, hold_not_active
    id              text,
    user_id         text,
    skill           text,
    skill_version   integer,
    units           integer,
    unit_cost       bigint,
    amount          bigint,
    status          text,
    expires_at      timestamptz,
    created_at      timestamptz,
    sources         jsonb,
    request_hash    bytea,
    sk              skills, -- the skill, when the answer names it
    credits         bigint,
    available       bigint,
    required        bigint
);

-- A transaction row as an outcome.
CREATE FUNCTION sc_tx_out(p_outcome text, t transactions) RETURNS sc_tx_outcome
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
    RETURN r;
END $$;

-- A hold row as an outcome (a held hold past expires_at reads 'expired').
CREATE FUNCTION sc_hold_out(p_outcome text, h holds) RETURNS sc_hold_outcome
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
    RETURN r;
END $$;

-- The skill, for the outcomes that name it (the caller refreshes its cache); callers read
-- its columns as (o.sk).name etc., so a new skill column needs no change here.
CREATE FUNCTION sc_skill_out(r sc_tx_outcome, s skills) RETURNS sc_tx_outcome
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    r.sk := s;
    RETURN r;
END $$;

CREATE FUNCTION sc_skill_out(r sc_hold_outcome, s skills) RETURNS sc_hold_outcome
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    r.sk := s;
    RETURN r;
END $$;

-- The earliest instant something of the user's falls due: an active grant's or a held
-- hold's expiry (NULL: never).
CREATE FUNCTION sc_next_due(p_user text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    SELECT least(
        (SELECT min(g.expires_at) FROM grants g
         WHERE g.user_id = p_user AND g.status = 'active'),
        (SELECT min(h.expires_at) FROM holds h
         WHERE h.user_id = p_user AND h.status = 'held'))
$$;

-- Write off what is due for a user whose row the caller has locked: holds past expires_at
-- give their reservations back, then each active grant past expires_at is written off by
-- one EXPIRY row (its remainder, sources = that grant). A grant is only ever written off
-- here, under the user's lock, and leaves 'active' as it is: exactly once.
CREATE FUNCTION sc_expire(p_user text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    g record;
    v_released bigint;
    v_credits bigint;
BEGIN
    WITH h AS (
        UPDATE holds SET status = 'expired', resolved_at = holds.expires_at
        WHERE holds.user_id = p_user AND holds.status = 'held' AND holds.expires_at <= now()
        RETURNING holds.amount, holds.sources
    ), parts AS (
        SELECT (e ->> 'grant_id')::uuid AS grant_id, sum((e ->> 'amount')::bigint) AS amount
        FROM h, jsonb_array_elements(h.sources) e GROUP BY 1
    ), freed AS (
        UPDATE grants SET reserved = grants.reserved - parts.amount
        FROM parts WHERE grants.id = parts.grant_id
        RETURNING parts.amount
    )
    SELECT (SELECT coalesce(sum(amount), 0) FROM h) INTO v_released;
    IF v_released > 0 THEN
        UPDATE users SET reserved = reserved - v_released WHERE user_id = p_user;
    END IF;

    FOR g IN
        SELECT id, remaining FROM grants
        WHERE user_id = p_user AND status = 'active' AND expires_at <= now()
        ORDER BY expires_at, priority, created_at, id
    LOOP
        UPDATE grants SET remaining = 0, status = 'expired' WHERE id = g.id;
        UPDATE users SET credits = credits - g.remaining WHERE user_id = p_user
        RETURNING credits INTO v_credits;
        INSERT INTO transactions (user_id, type, amount, balance_after, sources)
        VALUES (p_user, 'EXPIRY', -g.remaining, v_credits,
                jsonb_build_array(jsonb_build_object('grant_id', g.id, 'amount', g.remaining)));
    END LOOP;

    UPDATE users SET next_due = sc_next_due(p_user) WHERE user_id = p_user;
END $$;

-- The user's transaction written under an Idempotency-Key (NULL when there is none). The
-- strict "=" implies the partial unique index's predicate (keyed rows only), so even a
-- generic plan can use that index.
CREATE FUNCTION sc_keyed(p_user text, p_key text) RETURNS transactions
LANGUAGE sql STABLE AS $$
    SELECT * FROM transactions WHERE user_id = p_user AND idempotency_key = p_key
$$;

-- Lock the user's row and write off what is due. False for an unknown user.
CREATE FUNCTION sc_lock(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
BEGIN
    SELECT next_due INTO v_due FROM users WHERE user_id = p_user FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        PERFORM sc_expire(p_user);
    END IF;
    RETURN true;
END $$;

-- For reads: write off what is due (taking the lock only then). False for an unknown user.
CREATE FUNCTION sc_touch(p_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_due timestamptz;
BEGIN
    SELECT next_due INTO v_due FROM users WHERE user_id = p_user;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF v_due <= now() THEN
        RETURN sc_lock(p_user);
    END IF;
    RETURN true;
END $$;

-- For the worker: the users with something due (touch each in its own transaction).
CREATE FUNCTION sc_due_users(p_limit integer) RETURNS SETOF text
LANGUAGE sql STABLE AS $$
    SELECT user_id FROM users WHERE next_due <= now() ORDER BY next_due LIMIT p_limit
$$;

-- Take p_need from the user's active grants in spending order (priority, then expires_at
-- with never last, then oldest), each as far as its free credits (remaining - reserved) go:
-- drawn from remaining, or set aside in reserved when p_reserve. p_until: only grants
-- that live at least that long (a hold's expiry). The caller holds the user's lock and has
-- checked that the grants cover p_need. Returns the sources, in the order taken.
CREATE FUNCTION sc_take(p_user text, p_need bigint, p_until timestamptz, p_reserve boolean)
RETURNS jsonb
LANGUAGE plpgsql AS $$
DECLARE
    v_id uuid;
    v_sources jsonb;
    v_total bigint;
BEGIN
    IF p_need = 0 THEN
        RETURN '[]'::jsonb;
    END IF;
    -- The usual case: the first grant with free credits covers it all.
    UPDATE grants
    SET remaining = remaining - CASE WHEN p_reserve THEN 0 ELSE p_need END,
        reserved = reserved + CASE WHEN p_reserve THEN p_need ELSE 0 END,
        status = CASE WHEN NOT p_reserve AND remaining = p_need THEN 'depleted' ELSE status END
    WHERE id = (SELECT f.id FROM grants f
                WHERE f.user_id = p_user AND f.status = 'active' AND f.remaining > f.reserved
                  AND (p_until IS NULL OR f.expires_at IS NULL OR f.expires_at >= p_until)
                ORDER BY f.priority, f.expires_at, f.created_at, f.id LIMIT 1)
      AND remaining - reserved >= p_need
    RETURNING id INTO v_id;
    IF FOUND THEN
        RETURN jsonb_build_array(jsonb_build_object('grant_id', v_id, 'amount', p_need));
    END IF;
    -- Across several grants: each takes what the ones before it left.
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

-- What the user's grants that live until p_until (NULL: all) have free.
CREATE FUNCTION sc_free(p_user text, p_until timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(remaining - reserved), 0)::bigint FROM grants
    WHERE user_id = p_user AND status = 'active'
      AND (p_until IS NULL OR expires_at IS NULL OR expires_at >= p_until)
$$;

-- Debit p_need in spending order for a user the caller has locked and checked: the grants,
-- then the balance. Returns the new balance and the sources.
CREATE FUNCTION sc_debit(p_user text, p_need bigint, OUT credits bigint, OUT sources jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    sources := sc_take(p_user, p_need, NULL, false);
    UPDATE users u SET credits = u.credits - p_need WHERE u.user_id = p_user
    RETURNING u.credits INTO sc_debit.credits;
END $$;

-- The 402 outcome: the balance, what is free, what was asked.
CREATE FUNCTION sc_short(p_user text, p_required bigint, p_until timestamptz)
RETURNS sc_tx_outcome
LANGUAGE plpgsql STABLE AS $$
DECLARE
    r sc_tx_outcome;
BEGIN
    r.outcome := 'insufficient';
    SELECT u.credits, u.credits - u.reserved INTO r.credits, r.available
    FROM users u WHERE u.user_id = p_user;
    IF p_until IS NOT NULL THEN
        r.available := sc_free(p_user, p_until);
    END IF;
    r.required := p_required;
    RETURN r;
END $$;

-- POST /v1/charges. Refusals in the contract's order: revoked key, replay, skill 404,
-- version (the caller's cached version is behind: it runs again at the one returned),
-- disabled, user 404, 402. p_version NULL: any version.
CREATE FUNCTION sc_charge(p_user text, p_skill text, p_version integer, p_units integer,
                          p_description text, p_key text, p_hash bytea, p_api_key_id text)
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
    IF p_api_key_id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM api_keys a WHERE a.id = p_api_key_id
                       AND a.revoked_at IS NULL) THEN
        r.outcome := 'key_revoked';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        -- a keyed request locks first, so a concurrent repeat finds this one's row
        PERFORM sc_lock(p_user);
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
    v_need := s.cost * p_units;
    LOOP
        -- The guarded UPDATE: locks the user and takes the balance when nothing is due and
        -- the free credits cover it; the grants then surely do (see the invariants above).
        UPDATE users SET credits = credits - v_need
        WHERE user_id = p_user AND credits - reserved >= v_need
          AND (next_due IS NULL OR next_due > now())
        RETURNING credits INTO v_credits;
        EXIT WHEN FOUND;
        IF NOT sc_lock(p_user) THEN
            r.outcome := 'user_not_found';
            RETURN r;
        END IF;
        IF NOT EXISTS (SELECT 1 FROM users WHERE user_id = p_user
                       AND credits - reserved >= v_need) THEN
            RETURN sc_skill_out(sc_short(p_user, v_need, NULL), s);
        END IF;
        -- something was due and is written off now: the guarded UPDATE runs again
    END LOOP;
    v_sources := sc_take(p_user, v_need, NULL, false);
    INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill, units,
                              unit_cost, description, idempotency_key, request_hash, sources)
    VALUES (p_user, 'CONSUMPTION', -v_need, v_credits, s.id, s.name, p_units, s.cost,
            p_description, p_key, p_hash, v_sources)
    RETURNING * INTO t;
    RETURN sc_skill_out(sc_tx_out('written', t), s);
END $$;

-- POST /v1/users/{id}/credits. Positive: creates the user if new and makes a grant (the
-- transaction names it in grant_id). Negative (ADJUSTMENT): draws in spending order; 404
-- for an unknown user, 402 when the free credits are short. A replay comes first.
CREATE FUNCTION sc_credit(p_user text, p_type text, p_amount bigint, p_description text,
                          p_key text, p_hash bytea, p_expires_at timestamptz,
                          p_priority integer, p_category text)
RETURNS sc_tx_outcome
LANGUAGE plpgsql AS $$
DECLARE
    r sc_tx_outcome;
    t transactions;
    v_grant uuid;
    v_credits bigint;
    v_sources jsonb;
BEGIN
    IF p_amount > 0 AND NOT sc_lock(p_user) THEN
        INSERT INTO users (user_id) VALUES (p_user) ON CONFLICT (user_id) DO NOTHING;
        PERFORM sc_lock(p_user);
    END IF;
    IF p_amount < 0 AND NOT sc_lock(p_user) THEN
        r.outcome := 'user_not_found';
        RETURN r;
    END IF;
    IF p_key IS NOT NULL THEN
        t := sc_keyed(p_user, p_key);
        IF t.id IS NOT NULL THEN
            RETURN sc_tx_out('replay', t);
        END IF;
    END IF;
    IF p_amount > 0 THEN
        v_grant := skill_credits_uuid_v7();
        UPDATE users SET credits = credits + p_amount,
                         next_due = least(next_due, p_expires_at)
        WHERE user_id = p_user
        RETURNING credits INTO v_credits;
        INSERT INTO transactions (user_id, type, amount, balance_after, description,
                                  idempotency_key, request_hash, grant_id)
        VALUES (p_user, p_type, p_amount, v_credits, p_description, p_key, p_hash, v_grant)
        RETURNING * INTO t;
        INSERT INTO grants (id, user_id, transaction_id, category, priority, amount, remaining,
                            expires_at)
        VALUES (v_grant, p_user, t.id,
                coalesce(p_category, CASE WHEN p_type = 'GRANT' THEN 'promotional' ELSE 'paid' END),
                coalesce(p_priority, 50), p_amount, p_amount, p_expires_at);
        RETURN sc_tx_out('written', t);
    END IF;
    IF NOT EXISTS (SELECT 1 FROM users WHERE user_id = p_user
                   AND credits - reserved >= -p_amount) THEN
        RETURN sc_short(p_user, -p_amount, NULL);
    END IF;
    SELECT d.credits, d.sources INTO v_credits, v_sources FROM sc_debit(p_user, -p_amount) d;
    INSERT INTO transactions (user_id, type, amount, balance_after, description,
                              idempotency_key, request_hash, sources)
    VALUES (p_user, p_type, p_amount, v_credits, p_description, p_key, p_hash, v_sources)
    RETURNING * INTO t;
    RETURN sc_tx_out('written', t);
END $$;

-- POST /v1/transactions/{id}/refund, for the user the transaction belongs to. Each source
-- goes back to its grant; the part of a grant past its expires_at is written off at once
-- by an EXPIRY right after the REFUND. A charge from before grants existed (no sources)
-- goes back to the user's first grant, the one the upgrade made.
CREATE FUNCTION sc_refund(p_user text, p_tx uuid, p_description text, p_key text,
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
    IF v_lapsed_total > 0 THEN
        UPDATE users SET credits = credits - v_lapsed_total WHERE user_id = p_user
        RETURNING credits INTO v_credits;
        INSERT INTO transactions (user_id, type, amount, balance_after, sources)
        VALUES (p_user, 'EXPIRY', -v_lapsed_total, v_credits, v_lapsed);
    END IF;
    RETURN sc_tx_out('written', t);
END $$;

-- POST /v1/holds: reserves cost x units in the grants that live at least as long as the
-- hold, in spending order. Refusals: replay, skill 404, version, disabled, user 404, 402
-- (available = what those grants have free).
CREATE FUNCTION sc_hold(p_user text, p_skill text, p_version integer, p_units integer,
                        p_ttl integer, p_description text, p_key text, p_hash bytea)
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
    UPDATE users SET reserved = reserved + v_need, hold_seq = hold_seq + 1,
                     next_due = least(next_due, v_until)
    WHERE user_id = p_user;
    RETURN sc_skill_out(sc_hold_out('written', h), s);
END $$;

-- A hold of the user's, locked, for capture and release; NULL when there is none.
CREATE FUNCTION sc_hold_of(p_user text, p_hold uuid) RETURNS holds
LANGUAGE sql AS $$
    SELECT * FROM holds WHERE id = p_hold AND user_id = p_user FOR UPDATE
$$;

-- Give a hold's reservations back to its grants and the user.
CREATE FUNCTION sc_unreserve(h holds) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE grants g SET reserved = g.reserved - (e ->> 'amount')::bigint
    FROM jsonb_array_elements(h.sources) e
    WHERE g.id = (e ->> 'grant_id')::uuid;
    UPDATE users SET reserved = reserved - h.amount, hold_seq = hold_seq + 1
    WHERE user_id = h.user_id;
END $$;

-- POST /v1/holds/{id}/capture: charges p_units at the hold's price, drawn from the grants
-- the hold reserved in (in that order), and frees the rest. p_units <= the hold's units
-- (the caller checks). Refusals: hold 404, replay, hold_not_active (hold_status says why).
CREATE FUNCTION sc_capture(p_user text, p_hold uuid, p_units integer, p_description text,
                           p_key text, p_hash bytea)
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
                              unit_cost, description, idempotency_key, request_hash, sources)
    VALUES (p_user, 'CONSUMPTION', -v_need, v_credits, h.skill_id, h.skill, p_units,
            h.unit_cost, coalesce(p_description, h.description), p_key, p_hash, v_sources)
    RETURNING * INTO t;
    UPDATE holds SET status = 'captured', resolved_at = clock_timestamp(), transaction_id = t.id
    WHERE id = h.id;
    RETURN sc_tx_out('written', t);
END $$;

-- POST /v1/holds/{id}/release: frees everything. Refusals: hold 404, hold_not_active.
CREATE FUNCTION sc_release(p_user text, p_hold uuid) RETURNS sc_hold_outcome
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
    UPDATE holds SET status = 'released', resolved_at = clock_timestamp() WHERE id = h.id
    RETURNING * INTO h;
    RETURN sc_hold_out('written', h);
END $$;

-- GET /v1/users/{id}: written off first, then read. No row for an unknown user.
CREATE FUNCTION sc_user(p_user text)
RETURNS TABLE (user_id text, credits bigint, reserved bigint, available bigint, paid bigint,
               promotional bigint, created_at timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT sc_touch(p_user) THEN
        RETURN;
    END IF;
    RETURN QUERY
    SELECT u.user_id, u.credits, u.reserved, u.credits - u.reserved,
           (SELECT coalesce(sum(g.remaining), 0) FROM grants g
            WHERE g.user_id = p_user AND g.status = 'active' AND g.category = 'paid')::bigint,
           (SELECT coalesce(sum(g.remaining), 0) FROM grants g
            WHERE g.user_id = p_user AND g.status = 'active'
              AND g.category = 'promotional')::bigint,
           u.created_at
    FROM users u WHERE u.user_id = p_user;
END $$;

-- Every way the grants disagree with the log, the holds and the balances (for reconcile).
CREATE FUNCTION sc_grant_problems()
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
    FROM grants g LEFT JOIN moved m ON m.grant_id = g.id
    WHERE g.remaining <> g.amount + coalesce(m.net, 0)
    UNION ALL
    SELECT g.user_id, g.id::text,
           format('reserved %s but remaining %s and live holds set aside %s',
                  g.reserved, g.remaining, coalesce(h.amount, 0))
    FROM grants g LEFT JOIN held h ON h.grant_id = g.id
    WHERE g.reserved < 0 OR g.reserved > g.remaining OR g.reserved <> coalesce(h.amount, 0)
    UNION ALL
    SELECT u.user_id, NULL,
           format('credits %s, reserved %s but the grants hold %s, reserve %s',
                  u.credits, u.reserved, coalesce(sum(g.remaining), 0),
                  coalesce(sum(g.reserved), 0))
    FROM users u LEFT JOIN grants g ON g.user_id = u.user_id AND g.status <> 'expired'
    GROUP BY u.user_id, u.credits, u.reserved
    HAVING u.credits <> coalesce(sum(g.remaining), 0)
        OR u.reserved <> coalesce(sum(g.reserved), 0)
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
