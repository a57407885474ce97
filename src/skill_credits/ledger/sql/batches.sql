-- Charges, holds and captures in batches.
--
-- A worker that has a charge in flight sends the charges that arrive meanwhile together:
-- one call of sc_charge_batch, one round trip, one transaction, one commit (holds and
-- captures likewise, below). Each item is
-- sc_charge as it is (its refusals in the contract's order, its key, its version check, its
-- grants and limits), run one after the other in the order given, each seeing what the
-- ones before it wrote. The caller orders the items by user (keeping each user's items in
-- arrival order), so two batches lock users in one order and never deadlock.
--
-- p_route is one of the batch's users: on a Citus cluster the call runs whole on the node
-- that holds that user (the function's distribution argument), so the caller sends in one
-- batch only users of one node (ledger/batch.py); anywhere else it is not read.
--
-- An item that raises (a key another batch committed meanwhile: the unique index; a
-- constraint) rolls the whole batch back: nothing of it was written, and the caller runs
-- its items again one by one.
CREATE OR REPLACE FUNCTION sc_charge_batch(p_route text, p_users text[], p_skills text[],
                                           p_versions integer[], p_units integer[],
                                           p_descriptions text[], p_keys text[],
                                           p_hashes bytea[], p_api_key_ids text[],
                                           p_members text[], p_limited boolean[])
RETURNS SETOF sc_tx_outcome
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. cardinality(p_users) LOOP
        RETURN NEXT sc_charge(p_users[i], p_skills[i], p_versions[i], p_units[i],
                              p_descriptions[i], p_keys[i], p_hashes[i], p_api_key_ids[i],
                              p_members[i], p_limited[i]);
    END LOOP;
END $$;

-- POST /v1/holds in batches, as sc_charge_batch: each item sc_hold as it is.
CREATE OR REPLACE FUNCTION sc_hold_batch(p_route text, p_users text[], p_skills text[],
                                         p_versions integer[], p_units integer[],
                                         p_ttls integer[], p_descriptions text[],
                                         p_keys text[], p_hashes bytea[], p_members text[])
RETURNS SETOF sc_hold_outcome
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. cardinality(p_users) LOOP
        RETURN NEXT sc_hold(p_users[i], p_skills[i], p_versions[i], p_units[i], p_ttls[i],
                            p_descriptions[i], p_keys[i], p_hashes[i], p_members[i]);
    END LOOP;
END $$;

-- POST /v1/holds/{id}/capture in batches, as sc_charge_batch: each item sc_capture as it is.
CREATE OR REPLACE FUNCTION sc_capture_batch(p_route text, p_users text[], p_ids uuid[],
                                            p_units integer[], p_descriptions text[],
                                            p_keys text[], p_hashes bytea[])
RETURNS SETOF sc_tx_outcome
LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1 .. cardinality(p_users) LOOP
        RETURN NEXT sc_capture(p_users[i], p_ids[i], p_units[i], p_descriptions[i],
                               p_keys[i], p_hashes[i]);
    END LOOP;
END $$;
