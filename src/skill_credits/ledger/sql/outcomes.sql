-- The outcomes the ledger functions answer (the types are in tables.sql): a row of the
-- log or a hold as an outcome, and the skill an answer names.

-- A transaction row as an outcome (with its member).
CREATE OR REPLACE FUNCTION sc_tx_out(p_outcome text, t transactions) RETURNS sc_tx_outcome
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
    r.member := t.member;
    RETURN r;
END $$;

-- A hold row as an outcome (a held hold past expires_at reads 'expired'; with its member).
CREATE OR REPLACE FUNCTION sc_hold_out(p_outcome text, h holds) RETURNS sc_hold_outcome
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
    r.member := h.member;
    RETURN r;
END $$;

-- The skill, for the outcomes that name it (the caller refreshes its cache); callers read
-- its columns as (o.sk).name etc., so a new skill column needs no change here.
CREATE OR REPLACE FUNCTION sc_skill_out(r sc_tx_outcome, s skills) RETURNS sc_tx_outcome
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    r.sk := s;
    RETURN r;
END $$;

CREATE OR REPLACE FUNCTION sc_skill_out(r sc_hold_outcome, s skills) RETURNS sc_hold_outcome
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    r.sk := s;
    RETURN r;
END $$;

-- The refusal about the skill and the user that a write of the skill s at p_version (NULL:
-- any) meets, in the contract's order, or NULL: s has no id when no skill has the name,
-- p_known is false when the user does not exist. (Callers answer it with the skill, which
-- the service reads on 'version' and 'skill_disabled' only.)
CREATE OR REPLACE FUNCTION sc_refusal(s skills, p_version integer, p_known boolean)
RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE WHEN s.id IS NULL THEN 'skill_not_found'
                WHEN p_version IS NOT NULL AND s.version <> p_version THEN 'version'
                WHEN NOT s.is_active THEN 'skill_disabled'
                WHEN NOT p_known THEN 'user_not_found' END;
END $$;
