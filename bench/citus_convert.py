"""How long `skill-credits migrate` takes to convert a database that grew on one server into
a distributed one (docs/citus.md): a database on the Citus coordinator's server without the
extension, seeded with USERS users of ROWS log rows each (a grant, its purchase, and
charges), then the extension and the workers added and `migrate` timed. Prints the rows and
the seconds; docs/citus.md extrapolates to a million users.

    make citus; uv run --group bench python bench/citus_convert.py [--users 100000] [--rows 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import (  # noqa: E402
    connection,
    create_citus_database,
    drop_databases,
    execute,
)

from bench.citus import CITUS  # noqa: E402
from bench.phases import log  # noqa: E402
from skill_credits.migrate import migrate  # noqa: E402
from skill_credits.settings import Settings  # noqa: E402


def seed(url: str, users: int, rows: int) -> None:
    """Each user: a PURCHASE with its grant, then ``rows - 1`` charges of 1 (log, balance,
    grant and log_seq agreeing, as the functions write them)."""
    asyncio.run(
        execute(
            url,
            "INSERT INTO skills (name, display_name, cost) VALUES ('CONVERT', 'c', 1)",
            f"INSERT INTO users (user_id, credits, log_seq) SELECT 'u' || g, 1000 - {rows - 1},"
            f" {rows} FROM generate_series(1, {users}) g",
            "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
            " SELECT 1, user_id, 'PURCHASE', 1000, 1000 FROM users",
            "INSERT INTO transactions (seq, user_id, type, amount, balance_after, skill_id,"
            " skill, units, unit_cost, sources)"
            f" SELECT k, u.user_id, 'CONSUMPTION', -1, 1000 - (k - 1), s.id, s.name, 1, 1, '[]'"
            f" FROM users u, skills s, generate_series(2, {rows}) k",
            "INSERT INTO grants (user_id, category, amount, remaining, status)"
            f" SELECT user_id, 'paid', 1000, 1000 - {rows - 1}, 'active' FROM users",
            "ANALYZE",
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--rows", type=int, default=10)
    args = parser.parse_args()
    name = f"sc_bench_convert_{uuid.uuid4().hex[:6]}"
    url = f"{CITUS}/{name}"
    try:
        migrate(Settings(database_url=url))
        log(f"seeding {args.users} users x {args.rows} rows on one server")
        seed(url, args.users, args.rows)

        async def size() -> int:
            async with connection(url) as conn:
                return await conn.fetchval("SELECT pg_database_size(current_database())")

        mb = asyncio.run(size()) / 2**20
        asyncio.run(create_citus_database(CITUS, name, grown=True))
        log("migrate: distributing")
        started = time.monotonic()
        migrate(Settings(database_url=url, db_command_timeout=3600))
        took = time.monotonic() - started
        print(
            f"{args.users} users, {args.users * args.rows} log rows, {mb:.0f} MB:"
            f" converted in {took:.1f} s"
        )
    finally:
        asyncio.run(drop_databases(CITUS, name))


if __name__ == "__main__":
    main()
