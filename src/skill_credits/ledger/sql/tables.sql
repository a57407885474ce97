-- The tables, types, indexes and the one view: the database's shape as it is today.
--
-- This file is read once, to build a database from nothing (the guard test does, and
-- so does anyone who wants the schema at a glance); an existing database gets a change
-- of shape from a migration, and this file changes with it, in the same commit (the
-- guard test fails until both agree). The checks and defaults call functions of
-- checks.sql, which is read before this file.

-- 1-128 characters of A-Z a-z 0-9 . _ : @ - (as a user id).
CREATE DOMAIN sc_member AS text CHECK (VALUE ~ '^[A-Za-z0-9._:@-]{1,128}$');

-- The skill catalogue (every node of a cluster has all of it).
CREATE TABLE skills (
    id            uuid NOT NULL DEFAULT gen_random_uuid(),
    name          text NOT NULL,
    display_name  text NOT NULL,
    description   text,
    cost          bigint NOT NULL,
    is_active     boolean NOT NULL DEFAULT true,
    version       integer NOT NULL DEFAULT 1,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT skills_pkey PRIMARY KEY (id),
    CONSTRAINT skills_name_key UNIQUE (name),
    CONSTRAINT skills_name_check CHECK (name ~ '^[A-Z][A-Z0-9_]{0,63}$'),
    CONSTRAINT skills_display_name_check CHECK (char_length(display_name) BETWEEN 1 AND 120),
    CONSTRAINT skills_description_check CHECK (char_length(description) <= 2000),
    CONSTRAINT skills_cost_check CHECK (cost BETWEEN 0 AND 1000000000),
    CONSTRAINT skills_version_check CHECK (version >= 1)
);

-- Every edit of a skill, one row a version (each is a skill.changed event: events.sql).
CREATE TABLE skill_history (
    skill_id    uuid NOT NULL,
    version     integer NOT NULL,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    changes     jsonb NOT NULL,
    CONSTRAINT skill_history_pkey PRIMARY KEY (skill_id, version),
    CONSTRAINT skill_history_skill_id_fkey FOREIGN KEY (skill_id) REFERENCES skills (id)
);

CREATE TABLE api_keys (
    id          text NOT NULL,
    name        text NOT NULL,
    role        text NOT NULL,
    key_hash    bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CONSTRAINT api_keys_pkey PRIMARY KEY (id),
    CONSTRAINT api_keys_name_check CHECK (char_length(name) BETWEEN 1 AND 100),
    CONSTRAINT api_keys_role_check CHECK (role IN ('admin', 'service'))
);
-- A name belongs to one live key at a time; a revoked name may be reused.
CREATE UNIQUE INDEX api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

-- Which database this is: its id names it in /metrics and in what the CLI prints.
CREATE TABLE database_identity (
    only_row  boolean NOT NULL DEFAULT true,
    id        uuid NOT NULL DEFAULT gen_random_uuid(),
    CONSTRAINT database_identity_pkey PRIMARY KEY (only_row),
    CONSTRAINT database_identity_only_row_check CHECK (only_row)
);
INSERT INTO database_identity DEFAULT VALUES;

-- A user's balance. credits = sum(remaining) and reserved = sum(reserved) over the
-- user's grants. head_grant is the grant a charge may draw from without reading grants,
-- head_free what it has free for charges, head_taken what charges took from it that its
-- own row does not show yet (folded under the lock: users.sql). next_due: the earliest
-- instant something of the user's expires (NULL: never). limited: the user has limits.
-- log_seq: the seq of the user's newest log row (the statement that writes a row bumps
-- it). recharge_below: the auto-recharge rule's threshold while a change that leaves
-- `available` at or below it would ask for a top-up (the rule active, none pending), else
-- NULL (recharges.sql). hold_seq is read by nothing (the statements of before grants moved it).
CREATE TABLE users (
    user_id                text NOT NULL,
    credits                bigint NOT NULL DEFAULT 0,
    hold_seq               bigint NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now(),
    low_balance_threshold  bigint,
    reserved               bigint NOT NULL DEFAULT 0,
    next_due               timestamptz,
    head_grant             uuid,
    head_free              bigint,
    head_taken             bigint NOT NULL DEFAULT 0,
    limited                boolean NOT NULL DEFAULT false,
    log_seq                bigint NOT NULL DEFAULT 0,
    recharge_below         bigint,
    CONSTRAINT users_pkey PRIMARY KEY (user_id),
    CONSTRAINT users_valid CHECK (sc_user_valid(user_id, credits, reserved,
                                                low_balance_threshold, head_free,
                                                head_taken))
);
CREATE INDEX users_next_due ON users (next_due) WHERE next_due IS NOT NULL;

-- The log: every change of a balance is one row, and no row is without its change.
-- sources: [{grant_id, amount}] drawn from, given back to or written off (positive
-- amounts; the row's sign says which); grant_id: the grant a positive credit made. seq
-- orders a user's rows: users.log_seq, bumped by the statement that writes the row.
CREATE TABLE transactions (
    seq              bigint NOT NULL,
    id               uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
    user_id          text NOT NULL,
    type             text NOT NULL,
    amount           bigint NOT NULL,
    balance_after    bigint NOT NULL,
    skill_id         uuid,
    skill            text,
    units            integer,
    unit_cost        bigint,
    description      text,
    refund_of        uuid,
    idempotency_key  text,
    request_hash     bytea,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    grant_id         uuid,
    sources          jsonb NOT NULL DEFAULT '[]',
    member           sc_member,
    CONSTRAINT transactions_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT transactions_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT transactions_skill_id_fkey FOREIGN KEY (skill_id) REFERENCES skills (id),
    CONSTRAINT transactions_refund_of_fkey FOREIGN KEY (refund_of, user_id)
        REFERENCES transactions (id, user_id),
    CONSTRAINT transactions_valid CHECK (sc_transaction_valid(type, amount, balance_after,
                                                              skill_id, units, unit_cost,
                                                              description, idempotency_key,
                                                              refund_of))
);
-- History pages: newest first per user, keyset on seq (and by type, by member).
CREATE UNIQUE INDEX transactions_user_seq ON transactions (user_id, seq DESC);
CREATE INDEX transactions_user_type_seq ON transactions (user_id, type, seq DESC);
CREATE INDEX transactions_member ON transactions (user_id, member, seq DESC)
    WHERE member IS NOT NULL;
CREATE UNIQUE INDEX transactions_idempotency ON transactions (user_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE UNIQUE INDEX transactions_refund_once ON transactions (refund_of, user_id)
    WHERE refund_of IS NOT NULL;
-- Usage reads the log by the instant its rows were made (usage.sql): a block range index,
-- which a new row in a range not summarized yet costs next to nothing.
CREATE INDEX transactions_created_at ON transactions USING brin (created_at)
    WITH (autosummarize = on);

-- Credits with a category, a priority and maybe an expiry; spent in order of priority,
-- expiry, age. status = 'active' exactly when remaining > 0; 0 <= reserved <= remaining.
CREATE TABLE grants (
    id              uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
    user_id         text NOT NULL,
    transaction_id  uuid,
    category        text NOT NULL,
    priority        smallint NOT NULL DEFAULT 50,
    amount          bigint NOT NULL,
    remaining       bigint NOT NULL,
    reserved        bigint NOT NULL DEFAULT 0,
    expires_at      timestamptz,
    status          text NOT NULL DEFAULT 'active',
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT grants_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT grants_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT grants_transaction_id_fkey FOREIGN KEY (transaction_id, user_id)
        REFERENCES transactions (id, user_id),
    CONSTRAINT grants_valid CHECK (sc_grant_valid(category, priority, amount, remaining,
                                                  reserved, status))
) WITH (fillfactor = 80);
-- Spending order within a status: the charge's first grant, the grants list.
CREATE INDEX grants_user_order ON grants (user_id, status, priority, expires_at, created_at, id);

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

-- Credits set aside for a skill call whose cost is known when it ends.
CREATE TABLE holds (
    id               uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
    user_id          text NOT NULL,
    skill_id         uuid NOT NULL,
    skill            text NOT NULL,
    skill_version    integer NOT NULL,
    units            integer NOT NULL,
    unit_cost        bigint NOT NULL,
    amount           bigint NOT NULL,
    status           text NOT NULL DEFAULT 'held',
    description      text,
    expires_at       timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    resolved_at      timestamptz,
    transaction_id   uuid,
    idempotency_key  text,
    request_hash     bytea,
    sources          jsonb NOT NULL DEFAULT '[]',
    member           sc_member,
    CONSTRAINT holds_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT holds_idempotency UNIQUE (user_id, idempotency_key),
    CONSTRAINT holds_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT holds_skill_id_fkey FOREIGN KEY (skill_id) REFERENCES skills (id),
    CONSTRAINT holds_transaction_id_fkey FOREIGN KEY (transaction_id, user_id)
        REFERENCES transactions (id, user_id),
    CONSTRAINT holds_amount_check CHECK (amount >= 0),
    CONSTRAINT holds_description_check CHECK (char_length(description) <= 500),
    CONSTRAINT holds_idempotency_key_check
        CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
    CONSTRAINT holds_status_check CHECK (status IN ('held', 'captured', 'released',
                                                    'expired')),
    CONSTRAINT holds_unit_cost_check CHECK (unit_cost >= 0),
    CONSTRAINT holds_units_check CHECK (units BETWEEN 1 AND 1000000)
);
-- What a user has reserved: the holds still 'held' (and not yet past expires_at).
CREATE INDEX holds_user_held ON holds (user_id) INCLUDE (amount, expires_at)
    WHERE status = 'held';

-- A cap on what is spent from one user's balance in a calendar window in UTC, for
-- everyone (member NULL) or one member, on every skill (skill_id NULL) or one. It counts
-- in its own row: `spent` in the window that starts at `window_start` (limits.sql).
CREATE TABLE limits (
    id            uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
    user_id       text NOT NULL,
    member        sc_member,
    skill_id      uuid,
    period        text NOT NULL,
    max_credits   bigint NOT NULL,
    window_start  timestamptz NOT NULL,
    spent         bigint NOT NULL DEFAULT 0,
    created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT limits_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT limits_one_per_scope UNIQUE NULLS NOT DISTINCT (user_id, member, skill_id,
                                                               period),
    CONSTRAINT limits_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT limits_skill_id_fkey FOREIGN KEY (skill_id) REFERENCES skills (id),
    CONSTRAINT limits_valid CHECK (sc_limit_valid(period, max_credits, spent))
) WITH (fillfactor = 80);

-- A user's auto-recharge rule (recharges.sql): ask for `amount` when a change leaves
-- `available` at or below `threshold`, at most `max_per_month` credits a calendar month.
CREATE TABLE recharge_rules (
    user_id               text NOT NULL,
    threshold             bigint NOT NULL,
    amount                bigint NOT NULL,
    max_per_month         bigint,
    category              text NOT NULL DEFAULT 'paid',
    priority              integer NOT NULL DEFAULT 50,
    expires_in_days       integer,
    status                text NOT NULL DEFAULT 'active',
    consecutive_failures  integer NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT recharge_rules_pkey PRIMARY KEY (user_id),
    CONSTRAINT recharge_rules_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT recharge_rules_threshold_check CHECK (threshold BETWEEN 0 AND 9007199254740992),
    CONSTRAINT recharge_rules_amount_check CHECK (amount BETWEEN 1 AND 9007199254740992),
    CONSTRAINT recharge_rules_max_per_month_check
        CHECK (max_per_month BETWEEN 1 AND 9007199254740992),
    CONSTRAINT recharge_rules_category_check CHECK (category IN ('paid', 'promotional')),
    CONSTRAINT recharge_rules_priority_check CHECK (priority BETWEEN 0 AND 100),
    CONSTRAINT recharge_rules_expires_in_days_check CHECK (expires_in_days BETWEEN 1 AND 3650),
    CONSTRAINT recharge_rules_status_check CHECK (status IN ('active', 'suspended')),
    CONSTRAINT recharge_rules_consecutive_failures_check CHECK (consecutive_failures >= 0)
);

-- A top-up asked of the host (recharges.sql), with what its purchase will be (the rule's
-- category, priority and lifetime when it was asked). At most one is pending per user.
CREATE SEQUENCE recharge_seq;
CREATE TABLE recharges (
    seq              bigint NOT NULL DEFAULT nextval('recharge_seq'),
    id               uuid NOT NULL,
    user_id          text NOT NULL,
    amount           bigint NOT NULL,
    category         text NOT NULL,
    priority         integer NOT NULL,
    expires_in_days  integer,
    status           text NOT NULL DEFAULT 'pending',
    reference        text,
    reason           text,
    transaction_id   uuid,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at       timestamptz NOT NULL,
    resolved_at      timestamptz,
    CONSTRAINT recharges_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT recharges_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (user_id),
    CONSTRAINT recharges_transaction_id_fkey FOREIGN KEY (transaction_id, user_id)
        REFERENCES transactions (id, user_id),
    CONSTRAINT recharges_amount_check CHECK (amount >= 1),
    CONSTRAINT recharges_status_check CHECK (status IN ('pending', 'fulfilled', 'failed',
                                                        'expired', 'canceled')),
    CONSTRAINT recharges_reference_check CHECK (char_length(reference) <= 255),
    CONSTRAINT recharges_reason_check CHECK (char_length(reason) BETWEEN 1 AND 500),
    CONSTRAINT recharges_fulfilled_check
        CHECK ((status = 'fulfilled') = (transaction_id IS NOT NULL))
);
-- The last line of defence: one pending request per user.
CREATE UNIQUE INDEX recharges_one_pending ON recharges (user_id) WHERE status = 'pending';
CREATE INDEX recharges_user_time ON recharges (user_id, created_at, seq);

CREATE TABLE webhook_endpoints (
    id          uuid NOT NULL DEFAULT gen_random_uuid(),
    url         text NOT NULL,
    secret      text NOT NULL,
    active      boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_endpoints_url_check CHECK (url ~ '^https?://')
);
CREATE UNIQUE INDEX webhook_endpoints_live_url ON webhook_endpoints (url) WHERE active;

-- What happened, in order (the triggers of events.sql write the rows): one sequence
-- numbers the events of the users and of the catalogue together; the feed lists them by
-- the instant they were written, ties by that number.
CREATE SEQUENCE event_seq;

-- A user's events (balance.*), kept with the user's rows.
CREATE TABLE events (
    seq         bigint NOT NULL DEFAULT nextval('event_seq'),
    id          uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
    type        text NOT NULL,
    user_id     text NOT NULL,
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT events_pkey PRIMARY KEY (id, user_id),
    CONSTRAINT events_type_check CHECK (type IN ('balance.low', 'balance.depleted',
                                                 'balance.recovered',
                                                 'balance.recharge_requested',
                                                 'balance.recharge_fulfilled',
                                                 'balance.recharge_suspended'))
);
-- The feed's order: the instant, then seq (on Citus each node numbers from its own range).
CREATE INDEX events_time ON events (created_at, seq);
CREATE INDEX events_user_time ON events (user_id, created_at, seq);

-- The catalogue's events (skill.changed): they name no user, so they live apart.
CREATE TABLE skill_events (
    seq         bigint NOT NULL DEFAULT nextval('event_seq'),
    id          uuid NOT NULL DEFAULT skill_credits_uuid_v7(),
    type        text NOT NULL DEFAULT 'skill.changed',
    data        jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    CONSTRAINT skill_events_pkey PRIMARY KEY (id),
    CONSTRAINT skill_events_type_check CHECK (type = 'skill.changed')
);
CREATE INDEX skill_events_time ON skill_events (created_at, seq);

-- Every event, the users' and the catalogue's, as GET /v1/events lists them.
CREATE VIEW all_events AS
SELECT seq, id, type, user_id, data, created_at FROM events
UNION ALL
SELECT seq, id, type, NULL::text AS user_id, data, created_at FROM skill_events;

-- Every event owed to every endpoint that was live when it happened: a user's events'
-- deliveries with the user's rows, the catalogue's apart.
CREATE TABLE event_deliveries (
    event_id         uuid NOT NULL,
    endpoint_id      uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    user_id          text NOT NULL,
    CONSTRAINT event_deliveries_pkey PRIMARY KEY (event_id, endpoint_id, user_id),
    CONSTRAINT event_deliveries_event_id_fkey FOREIGN KEY (event_id, user_id)
        REFERENCES events (id, user_id),
    CONSTRAINT event_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhook_endpoints (id),
    CONSTRAINT event_deliveries_status_check CHECK (status IN ('pending', 'delivered',
                                                               'dead'))
);
CREATE INDEX event_deliveries_due ON event_deliveries (next_attempt_at)
    WHERE status = 'pending';

CREATE TABLE skill_event_deliveries (
    event_id         uuid NOT NULL,
    endpoint_id      uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    delivered_at     timestamptz,
    CONSTRAINT skill_event_deliveries_pkey PRIMARY KEY (event_id, endpoint_id),
    CONSTRAINT skill_event_deliveries_event_id_fkey FOREIGN KEY (event_id)
        REFERENCES skill_events (id),
    CONSTRAINT skill_event_deliveries_endpoint_id_fkey FOREIGN KEY (endpoint_id)
        REFERENCES webhook_endpoints (id),
    CONSTRAINT skill_event_deliveries_status_check CHECK (status IN ('pending', 'delivered',
                                                                     'dead'))
);
CREATE INDEX skill_event_deliveries_due ON skill_event_deliveries (next_attempt_at)
    WHERE status = 'pending';

-- Usage (usage.sql): one row per CONSUMPTION (a charge or a capture) and per REFUND of the
-- log, the refund under its charge's skill and member. paid: the part of the row's sources
-- drawn from (given back to) paid grants, the rest being promotional (a grant is named once
-- in a row's sources). A subquery, not a join on the sources' elements: Citus pushes it
-- down to the workers; it cannot do that with a function of the row in FROM.
CREATE VIEW usage_log AS
SELECT t.user_id, t.created_at,
       CASE WHEN t.type = 'REFUND' THEN o.skill ELSE t.skill END AS skill,
       CASE WHEN t.type = 'REFUND' THEN o.member ELSE t.member END::text AS member,
       (t.type = 'CONSUMPTION')::integer AS charges,
       CASE WHEN t.type = 'CONSUMPTION' THEN t.units ELSE 0 END AS units,
       CASE WHEN t.type = 'CONSUMPTION' THEN -t.amount ELSE 0 END AS consumed,
       CASE WHEN t.type = 'REFUND' THEN t.amount ELSE 0 END AS refunded,
       (SELECT coalesce(sum(jsonb_path_query_first(
                   t.sources, '$[*] ? (@.grant_id == $id).amount',
                   jsonb_build_object('id', g.id::text))::text::bigint), 0)
        FROM grants g
        WHERE g.user_id = t.user_id AND g.category = 'paid'
          AND t.sources @> jsonb_build_array(jsonb_build_object('grant_id', g.id::text))
       )::bigint AS paid
FROM transactions t
LEFT JOIN transactions o
       ON t.type = 'REFUND' AND o.user_id = t.user_id AND o.id = t.refund_of
WHERE t.type IN ('CONSUMPTION', 'REFUND');

-- usage_log summed by user, hour (UTC), skill and member ('' for none), for every row made
-- before usage_marks.rolled_to: what a background step rolls up (sc_usage_roll), so a
-- usage answer reads these and only the log's tail after rolled_to.
CREATE TABLE usage_hours (
    user_id        text NOT NULL,
    hour           timestamptz NOT NULL,
    skill          text NOT NULL,
    member         text NOT NULL,
    charges        bigint NOT NULL,
    units          bigint NOT NULL,
    consumed       bigint NOT NULL,
    refunded       bigint NOT NULL,
    paid_consumed  bigint NOT NULL,
    paid_refunded  bigint NOT NULL,
    CONSTRAINT usage_hours_pkey PRIMARY KEY (user_id, hour, skill, member)
);
CREATE INDEX usage_hours_hour ON usage_hours (hour);

-- The same summed over users: what an answer about every user reads.
CREATE TABLE usage_skill_hours (
    hour           timestamptz NOT NULL,
    skill          text NOT NULL,
    charges        bigint NOT NULL,
    units          bigint NOT NULL,
    consumed       bigint NOT NULL,
    refunded       bigint NOT NULL,
    paid_consumed  bigint NOT NULL,
    paid_refunded  bigint NOT NULL,
    CONSTRAINT usage_skill_hours_pkey PRIMARY KEY (hour, skill)
);

-- How far the rollups go: every usage_log row made before rolled_to is in them, none after.
CREATE TABLE usage_marks (
    only_row   boolean NOT NULL DEFAULT true,
    rolled_to  timestamptz NOT NULL DEFAULT '-infinity',
    CONSTRAINT usage_marks_pkey PRIMARY KEY (only_row),
    CONSTRAINT usage_marks_only_row_check CHECK (only_row)
);
INSERT INTO usage_marks DEFAULT VALUES;

-- What a ledger function answers: 'written', or which check refused it with the facts
-- the answer needs (outcomes.sql builds them).
CREATE TYPE sc_tx_outcome AS (
    outcome         text,   -- written, replay, key_revoked, skill_not_found, version,
                            -- skill_disabled, user_not_found, insufficient, limited,
                            -- not_found, not_refundable, already_refunded,
                            -- hold_not_found, hold_not_active
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
    hold_status     text,
    member          text,
    lim             jsonb,  -- the limit that refused it
    limited         boolean -- the user has limits (the worker's hint follows it)
);

CREATE TYPE sc_hold_outcome AS (
    outcome         text,   -- written, replay, skill_not_found, version, skill_disabled,
                            -- user_not_found, insufficient, limited, hold_not_found,
                            -- hold_not_active
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
    sk              skills,
    credits         bigint,
    available       bigint,
    required        bigint,
    member          text,
    lim             jsonb
);
