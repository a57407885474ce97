-- The ledger on a Citus cluster: which table lives where, and where each function runs.
--
-- Run by `skill-credits migrate` (migrations/env.py) after the present functions, in the
-- upgrade's transaction, only where the database has the citus extension; every command
-- does nothing when what it makes is there already, so every later upgrade keeps the
-- cluster as this file says. On one PostgreSQL server it never runs.
--
-- * A user's data is distributed by user_id, every table colocated with users: a user's
--   rows live on one node, in shards of the same hash range.
-- * The catalogue (skills, their history, API keys, webhook endpoints, the catalogue's
--   events) and database_identity are copied to every node (reference tables): every
--   node prices a charge, and the service may connect to any.
-- * alembic_version stays on the coordinator.
-- * Every function whose first argument is the user (p_user) or a batch's route (p_route)
--   is delegated: a call that is the top level of its statement runs whole on the node
--   that holds that user, in one hop. Every other function is copied to every node.
--
-- A table that a later migration adds goes in one of the two lists below, and the same
-- `migrate` puts it on the cluster (docs/citus.md, "Changing the schema"). A database that
-- grew on one server goes through the same steps: the foreign keys of these tables are
-- dropped, the tables distributed (their rows copied into shards), and the keys added
-- again one per ALTER (the order Citus requires).

-- Each table of the two lists below that is not on the cluster yet: all of them the first
-- time, a table a later migration adds after that. The foreign keys of those tables are
-- dropped first and added again last, one per ALTER (Citus refuses other orders).
DO $$
DECLARE
    reference constant text[] := ARRAY['skills', 'skill_history', 'api_keys',
                                       'webhook_endpoints', 'skill_events',
                                       'skill_event_deliveries', 'database_identity',
                                       'usage_skill_hours', 'usage_marks'];
    per_user constant text[] := ARRAY['users', 'transactions', 'grants', 'holds', 'limits',
                                      'events', 'event_deliveries', 'usage_hours',
                                      'recharge_rules', 'recharges'];
    missing text[];
    t text;
    k record;
    keys jsonb := '[]';
BEGIN
    SELECT coalesce(array_agg(x), '{}') INTO missing
    FROM unnest(reference || per_user) x
    WHERE NOT EXISTS (SELECT 1 FROM pg_dist_partition WHERE logicalrelid = x::regclass);
    IF missing = '{}' THEN
        RETURN;
    END IF;
    FOR k IN SELECT conrelid::regclass::text AS tbl, conname, pg_get_constraintdef(oid) AS def
             FROM pg_constraint
             WHERE contype = 'f' AND conrelid::regclass::text = ANY (missing)
             ORDER BY conrelid::regclass::text, conname
    LOOP
        EXECUTE format('ALTER TABLE %I DROP CONSTRAINT %I', k.tbl, k.conname);
        keys := keys || jsonb_build_object('tbl', k.tbl, 'name', k.conname, 'def', k.def);
    END LOOP;
    FOREACH t IN ARRAY reference LOOP
        IF t = ANY (missing) THEN
            PERFORM create_reference_table(t);
        END IF;
    END LOOP;
    FOREACH t IN ARRAY per_user LOOP  -- users first: the others are colocated with it
        IF t = 'users' AND t = ANY (missing) THEN
            PERFORM create_distributed_table(t, 'user_id');
        ELSIF t = ANY (missing) THEN
            PERFORM create_distributed_table(t, 'user_id', colocate_with => 'users');
        END IF;
    END LOOP;
    FOR k IN SELECT * FROM jsonb_to_recordset(keys) AS x(tbl text, name text, def text) LOOP
        EXECUTE format('ALTER TABLE %I ADD CONSTRAINT %I %s', k.tbl, k.name, k.def);
    END LOOP;
END $$;

-- The user of the row p_id of p_table (transactions, holds), asked of the one node that
-- holds the shard of p_route: a user id whose hash falls in the same shard as the hash the
-- id carries (sc_id; db/shards.py picks it). Delegated by p_route, it reads that shard
-- alone, where it lies; None when the row is not there.
CREATE OR REPLACE FUNCTION sc_owner(p_route text, p_table regclass, p_id uuid) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_user text;
BEGIN
    EXECUTE format('SELECT user_id FROM %s WHERE id = $1',
                   shard_name(p_table, get_shard_id_for_distribution_column(p_table, p_route)))
    INTO v_user USING p_id;
    RETURN v_user;
END $$;

DO $$
DECLARE
    f record;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure AS fn, p.proargnames[1] AS first
        FROM pg_proc p
        LEFT JOIN pg_dist_object d
               ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid
        WHERE p.pronamespace = 'public'::regnamespace
          AND (p.proname LIKE 'sc\_%' OR p.proname LIKE 'skill\_credits\_%')
          AND (d.objid IS NULL
               OR (p.proargnames[1] IN ('p_user', 'p_route')
                   AND d.distribution_argument_index IS DISTINCT FROM 0))
    LOOP
        IF f.first IN ('p_user', 'p_route') THEN
            PERFORM create_distributed_function(f.fn, f.first, colocate_with => 'users');
        ELSE
            PERFORM create_distributed_function(f.fn);
        END IF;
    END LOOP;
END $$;

-- A function that one server runs with one generic plan (force_generic_plan, as sc_charge)
-- plans each call afresh here: Citus cannot plan a statement on a distributed table whose
-- user is a parameter and that joins or has subqueries ("could not create distributed
-- plan … parameters"); with the values in place, each statement goes to its shard.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
             WHERE p.pronamespace = 'public'::regnamespace
               AND EXISTS (SELECT 1 FROM unnest(p.proconfig) c
                           WHERE c = 'plan_cache_mode=force_generic_plan')
    LOOP
        EXECUTE format('ALTER FUNCTION %s RESET plan_cache_mode', f.fn);
    END LOOP;
END $$;
