"""The benchmark's databases: seeded alike for every target, grown for the log-size runs,
and read back after the overdraw run. Statements run from outside the app
(tests/support/databases.py)."""

from __future__ import annotations

import asyncio
import os

from tests.support.databases import (
    connection,
    create_citus_database,
    drop_databases,
    execute,
    nodes,
)

from skill_credits.db import Database
from skill_credits.ledger.repository import encode_cursor
from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from skill_credits.skills.cache import entry_key
from skill_credits.skills.service import cache_prefix

PG = os.environ.get("BENCH_PG", "postgresql://127.0.0.1:5432")  # a server URL, no database
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
USERS = 10_000
BIG = 10**15
SKILL = "BENCH_SKILL"
# cost 2: the first charge of a span user (grants of 1, then two big ones) spans two grants
SPAN_SKILL = "BENCH_SPAN"


def fresh_database(base: str, name: str, *, charged: bool = True) -> str:
    """A migrated database ``name`` with the bench's skill and users: its URL. ``charged``:
    each user charged once through the charge function (not for the original design,
    which writes the balance itself and knows nothing of the head grant)."""
    asyncio.run(drop_databases(base, name))
    if len(asyncio.run(nodes(base))) > 1:  # a Citus coordinator: the database on every node
        asyncio.run(create_citus_database(base, name))
    url = f"{base}/{name}"
    migrate(Settings(database_url=url))
    asyncio.run(
        execute(
            url,
            # one skill at cost 1, its creation in the history like the API writes it
            f"INSERT INTO skills (name, display_name, cost) VALUES ('{SKILL}', 'Bench', 1)",
            "INSERT INTO skill_history (skill_id, version, actor, changes)"
            " SELECT id, 1, 'bench', '{\"cost\": [null, 1]}' FROM skills",
            # 10 000 users and a hot one, each with one GRANT that the log proves
            f"INSERT INTO users (user_id, credits) SELECT 'bench_' || g, {BIG}"
            f" FROM generate_series(0, {USERS - 1}) g",
            f"INSERT INTO users (user_id, credits) VALUES ('bench_hot', {BIG}),"
            " ('bench_deep', 0), ('bench_overdraw', 0)",
            "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
            " SELECT 1, user_id, 'GRANT', credits, credits FROM users WHERE credits > 0",
            # bench_deep has a history of its own from the start: 200 GRANTs of 1
            "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
            " SELECT k, 'bench_deep', 'GRANT', 1, k FROM generate_series(1, 200) k ORDER BY k",
            "UPDATE users SET credits = 200 WHERE user_id = 'bench_deep'",
            # each user's log numbered from 1 (users.log_seq: the newest row's seq)
            "UPDATE users u SET log_seq = t.seq FROM (SELECT user_id, max(seq) AS seq"
            " FROM transactions GROUP BY user_id) t WHERE t.user_id = u.user_id",
            # each balance is one grant that never expires, as the upgrade to grants made it
            "INSERT INTO grants (user_id, category, amount, remaining, status)"
            " SELECT user_id, 'paid', credits, credits,"
            "        CASE WHEN credits > 0 THEN 'active' ELSE 'depleted' END FROM users",
        )
    )
    if charged:
        # a user's first charge after the upgrade goes the slow way once and makes the
        # head (ledger/sql/charge.sql); the runs measure the steady state. A call each (on
        # Citus a call runs on its user's node only when it is its statement's top level)
        asyncio.run(_charge_each_once(url))
    return url


def naive_tables(url: str) -> None:
    """The naive handler's own minimal schema in the bench's database (bench/naive_app.py;
    the issue's naive_schema.sql with its tables prefixed): the bench's skill at cost 1 and
    its users with their balances, so the same load charges both."""
    asyncio.run(
        execute(
            url,
            "DROP TABLE IF EXISTS naive_credit_transactions, naive_users, naive_skill_configs",
            "CREATE TABLE naive_skill_configs (id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " name text UNIQUE NOT NULL, cost int NOT NULL,"
            " is_active bool NOT NULL DEFAULT true, version int NOT NULL DEFAULT 1)",
            "CREATE TABLE naive_users (id text PRIMARY KEY,"
            " credits bigint NOT NULL CHECK (credits >= 0))",
            "CREATE TABLE naive_credit_transactions ("
            " id uuid PRIMARY KEY DEFAULT gen_random_uuid(),"
            " user_id text NOT NULL REFERENCES naive_users (id), amount bigint NOT NULL,"
            " type text NOT NULL, skill_id uuid, description text NOT NULL,"
            " balance_after bigint NOT NULL, idempotency_key text,"
            " created_at timestamptz NOT NULL DEFAULT now())",
            "CREATE INDEX ON naive_credit_transactions (user_id, created_at DESC)",
            f"INSERT INTO naive_skill_configs (name, cost) VALUES ('{SKILL}', 1)",
            "INSERT INTO naive_users SELECT user_id, credits FROM users",
        )
    )


async def _charge_each_once(url: str) -> None:
    async with connection(url) as conn:
        users = [f"bench_{n}" for n in range(USERS)] + ["bench_hot"]
        await conn.executemany(
            f"SELECT * FROM sc_charge($1, '{SKILL}', NULL, 1, NULL, NULL, NULL, NULL)",
            [(user,) for user in users],
        )


async def grow_log(url: str, rows: int) -> None:
    """Append ``rows`` GRANT rows of 1 credit (90 % spread over the users, 10 % on
    bench_deep), keeping every balance_after and balance true to the log."""
    spread, deep = rows * 9 // 10, rows // 10
    per_user = spread // USERS
    await execute(
        url,
        "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
        " SELECT u.log_seq + k, u.user_id, 'GRANT', 1, u.credits + k"
        f" FROM users u CROSS JOIN generate_series(1, {per_user}) k"
        " WHERE u.user_id LIKE 'bench\\_%' AND u.user_id ~ '^bench_[0-9]+$'"
        " ORDER BY k, u.user_id",
        f"UPDATE users SET credits = credits + {per_user}, log_seq = log_seq + {per_user}"
        " WHERE user_id ~ '^bench_[0-9]+$'",
        f"UPDATE grants SET amount = amount + {per_user}, remaining = remaining + {per_user}"
        " WHERE user_id ~ '^bench_[0-9]+$'",
        "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
        " SELECT u.log_seq + k, 'bench_deep', 'GRANT', 1, u.credits + k"
        f" FROM users u CROSS JOIN generate_series(1, {deep}) k"
        " WHERE u.user_id = 'bench_deep' ORDER BY k",
        f"UPDATE users SET credits = credits + {deep}, log_seq = log_seq + {deep}"
        " WHERE user_id = 'bench_deep'",
        f"UPDATE grants SET amount = amount + {deep}, remaining = remaining + {deep}"
        " WHERE user_id = 'bench_deep'",
        "VACUUM ANALYZE transactions",
    )


async def log_rows(url: str) -> int:
    async with connection(url) as conn:
        return await conn.fetchval("SELECT count(*) FROM transactions")


async def deep_cursor(url: str) -> str:
    """A cursor near the oldest end of bench_deep's history."""
    async with connection(url) as conn:
        seq = await conn.fetchval(
            "SELECT seq FROM transactions WHERE user_id = 'bench_deep'"
            " ORDER BY seq ASC OFFSET 100 LIMIT 1"
        )
    return encode_cursor(seq) if seq else ""


async def reset_overdraw(url: str, balance: int) -> None:
    """bench_overdraw with ``balance`` credits, proved by one GRANT, in one grant."""
    await execute(
        url,
        "DELETE FROM grants WHERE user_id = 'bench_overdraw'",
        "DELETE FROM transactions WHERE user_id = 'bench_overdraw'",
        f"UPDATE users SET credits = {balance}, log_seq = 1 WHERE user_id = 'bench_overdraw'",
        f"INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
        f" VALUES (1, 'bench_overdraw', 'GRANT', {balance}, {balance})",
        "INSERT INTO grants (user_id, category, amount, remaining, status)"
        f" VALUES ('bench_overdraw', 'paid', {balance}, {balance},"
        f" '{'active' if balance > 0 else 'depleted'}')",
    )


async def overdraw_state(url: str):
    """bench_overdraw's balance, the sum of its log, and its CONSUMPTION rows."""
    async with connection(url) as conn:
        return await conn.fetchrow(
            "SELECT u.credits, (SELECT sum(amount) FROM transactions t"
            " WHERE t.user_id = u.user_id) AS logged,"
            " (SELECT count(*) FROM transactions t WHERE t.user_id = u.user_id"
            "  AND t.type = 'CONSUMPTION') AS charges"
            " FROM users u WHERE user_id = 'bench_overdraw'"
        )


async def skill_cache_key(url: str, prefix: str, skill: str) -> str:
    """The Redis key under which the app at ``url`` (REDIS_PREFIX ``prefix``) caches ``skill``."""
    db = Database(Settings(database_url=url))
    try:
        return entry_key(await cache_prefix(db, prefix), skill)
    finally:
        await db.dispose()
