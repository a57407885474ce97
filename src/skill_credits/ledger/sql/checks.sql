-- What the tables' checks and defaults call, and what reconcile asks of the grants.
--
-- Each table of the ledger has one CHECK, calling an IMMUTABLE PL/pgSQL function with all
-- its rules: PostgreSQL rebuilds every CHECK expression from its stored text for each
-- statement that writes the table, while a PL/pgSQL function is compiled once per
-- connection. The rules are still checked on every row written. Read before tables.sql.

-- A time-ordered UUID (version 7): 48 bits of Unix milliseconds, then random bits, so
-- inserts land at the right edge of a primary-key index.
CREATE OR REPLACE FUNCTION skill_credits_uuid_v7() RETURNS uuid LANGUAGE sql VOLATILE AS $$
    -- 48 bits of Unix milliseconds, then random bits; version 7, variant 10
    SELECT encode(
        set_bit(set_bit(
            overlay(uuid_send(gen_random_uuid())
                    PLACING substring(int8send((extract(epoch FROM clock_timestamp())
                                                * 1000)::bigint) FROM 3)
                    FROM 1 FOR 6),
            52, 1), 53, 1),
        'hex')::uuid
$$;

-- The id of a user's transaction or hold: a UUID v7 whose last four bytes are the user's
-- hash (hashtext, what Citus places the user's rows by). A route that names only the id
-- finds the node that holds the row from the id itself (db/shards.py, docs/citus.md); on
-- one server nothing reads them. 42 random bits stay, per millisecond and user (the keys
-- are (id, user_id)).
CREATE OR REPLACE FUNCTION sc_id(p_owner text) RETURNS uuid LANGUAGE sql VOLATILE AS $$
    SELECT encode(overlay(uuid_send(skill_credits_uuid_v7()) PLACING int4send(hashtext(p_owner))
                          FROM 13 FOR 4), 'hex')::uuid
$$;

-- One per rule, each true (or unknown) as the CHECK it replaces was.
CREATE OR REPLACE FUNCTION sc_transaction_valid(
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

CREATE OR REPLACE FUNCTION sc_grant_valid(
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

CREATE OR REPLACE FUNCTION sc_user_valid(
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

CREATE OR REPLACE FUNCTION sc_limit_valid(p_period text, p_max_credits bigint, p_spent bigint)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN (p_period IN ('minute', 'hour', 'day', 'month')) IS NOT FALSE
       AND (p_max_credits BETWEEN 0 AND 9007199254740992) IS NOT FALSE
       AND (p_spent >= 0) IS NOT FALSE;
END $$;

-- Every way the grants disagree with the log, the holds and the balances (for reconcile),
-- on the grants as reads see them (grants_now). PL/pgSQL (the rules: a query on a user's
-- tables in an SQL-language function cannot be planned on Citus).
CREATE OR REPLACE FUNCTION sc_grant_problems()
RETURNS TABLE (user_id text, grant_id text, problem text)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH moved AS (
        SELECT t.user_id, (e ->> 'grant_id')::uuid AS grant_id,
               sum(sign(t.amount) * (e ->> 'amount')::bigint)::bigint AS net
        FROM transactions t, jsonb_array_elements(t.sources) e GROUP BY 1, 2
    ), held AS (
        SELECT h.user_id, (e ->> 'grant_id')::uuid AS grant_id,
               sum((e ->> 'amount')::bigint) AS amount
        FROM holds h, jsonb_array_elements(h.sources) e
        WHERE h.status = 'held' GROUP BY 1, 2
    )
    SELECT g.user_id, g.id::text,
           format('remaining %s but amount %s and the log''s sources give %s',
                  g.remaining, g.amount, g.amount + coalesce(m.net, 0))
    FROM grants_now g LEFT JOIN moved m ON m.user_id = g.user_id AND m.grant_id = g.id
    WHERE g.remaining <> g.amount + coalesce(m.net, 0)
    UNION ALL
    SELECT g.user_id, g.id::text,
           format('reserved %s but remaining %s and live holds set aside %s',
                  g.reserved, g.remaining, coalesce(h.amount, 0))
    FROM grants_now g LEFT JOIN held h ON h.user_id = g.user_id AND h.grant_id = g.id
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
    FROM users u JOIN grants_now g ON g.user_id = u.user_id AND g.id = u.head_grant
    WHERE u.head_free > g.remaining - g.reserved
    UNION ALL
    SELECT t.user_id, NULL,
           format('transaction %s of %s has sources summing to %s', t.id, t.amount,
                  (SELECT coalesce(sum((e ->> 'amount')::bigint), 0)
                   FROM jsonb_array_elements(t.sources) e))
    FROM transactions t
    WHERE t.sources <> '[]'::jsonb
      AND abs(t.amount) <> (SELECT coalesce(sum((e ->> 'amount')::bigint), 0)
                            FROM jsonb_array_elements(t.sources) e);
END $$;
