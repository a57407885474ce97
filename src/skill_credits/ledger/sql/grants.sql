-- The grants' walk: taking credits in spending order (priority, expiry, age), what is free,
-- and the 402 outcome.
--
-- Invariants the functions keep (reconcile checks them: checks.sql):
--   grants.status = 'active' exactly when remaining > 0; expired and depleted grants hold 0;
--   0 <= grants.reserved <= grants.remaining (what live holds set aside in the grant);
--   users.credits = sum(remaining) and users.reserved = sum(reserved) over the user's grants;
--   users.next_due <= the earliest expires_at of the user's active grants and held holds.
-- Because of those, credits - reserved is what a charge may take, and a charge whose guarded
-- UPDATE of users succeeds always finds the credits in the grants (sc_take).

-- Take p_need from the user's grants in spending order (each grant takes what the ones
-- before it left), for a user the caller has locked; p_reserve: set it aside for a hold
-- instead. Only grants that live until p_until (NULL: all) count. Returns the sources.
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
        FROM d WHERE g.user_id = p_user AND g.id = d.id
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
CREATE OR REPLACE FUNCTION sc_free(p_user text, p_until timestamptz) RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(remaining - reserved), 0)::bigint FROM grants
            WHERE user_id = p_user AND status = 'active'
              AND (p_until IS NULL OR expires_at IS NULL OR expires_at >= p_until));
END $$;

-- Give what holds set aside (their sources, a grant maybe more than once) back to the
-- user's grants; the caller gives the user's row its part.
CREATE OR REPLACE FUNCTION sc_unreserve(p_user text, p_sources jsonb) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE grants g SET reserved = g.reserved - e.amount
    FROM (SELECT (x ->> 'grant_id')::uuid AS grant_id, sum((x ->> 'amount')::bigint) AS amount
          FROM jsonb_array_elements(p_sources) x GROUP BY 1) e
    WHERE g.user_id = p_user AND g.id = e.grant_id;
END $$;

-- The 402 outcome: the balance, what is free, what was asked.
CREATE OR REPLACE FUNCTION sc_short(p_user text, p_required bigint, p_until timestamptz)
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
