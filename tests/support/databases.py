"""PostgreSQL and Redis as tests and benchmarks see them from outside the app: a connection
for a few statements, throwaway databases and key prefixes, API keys, the ledger's checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import redis as redis_sync
from sqlalchemy import text

from skill_credits.auth import create_key
from skill_credits.db import Database
from skill_credits.ledger.repository import reconcile
from skill_credits.settings import Settings


@asynccontextmanager
async def connection(url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(url)
    try:
        yield conn
    finally:
        await conn.close()


async def execute(url: str, *statements: str) -> None:
    async with connection(url) as conn:
        for statement in statements:
            await conn.execute(statement)


def at_revision(url: str, revision: str) -> None:
    """Create the database at ``url`` and upgrade it to ``revision`` (blocking; the last
    release's head, for a test of what the history does from there: 0012 and later do not
    go down)."""
    import asyncio

    from alembic import command

    from skill_credits.migrate import alembic_config, create_database_if_missing

    asyncio.run(create_database_if_missing(url))
    command.upgrade(alembic_config(Settings(database_url=url)), revision)


async def drop_databases(base: str, *names: str) -> None:
    """``base`` is a server URL without database name."""
    await execute(
        f"{base}/postgres", *(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names)
    )


def delete_prefix(redis_url: str, prefix: str) -> None:
    """Every Redis key under ``prefix`` (a run's own)."""
    client = redis_sync.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


async def create_keys(url: str, *roles: str) -> list[str]:
    """A live API key of each role (named after it) in the database at ``url``: the tokens."""
    db = Database(Settings(database_url=url))
    try:
        async with db.engine.begin() as conn:
            made = [await create_key(conn, f"{role}-{n}", role) for n, role in enumerate(roles)]
        return [key.token for key in made]
    finally:
        await db.dispose()


async def problems(url: str) -> list[str]:
    """What ``reconcile`` finds wrong in the ledger of the database at ``url`` (given up to
    ten minutes: a benchmark's log holds millions of rows)."""
    db = Database(Settings(database_url=url, db_command_timeout=600))
    try:
        async with db.autocommit.connect() as conn:
            return await reconcile(conn)
    finally:
        await db.dispose()


async def assert_reconciled(db: Database) -> None:
    async with db.autocommit.connect() as conn:
        found = await reconcile(conn)
        assert found == [], found


async def snapshot(db: Database) -> tuple:
    """What a refused request must leave unchanged: rows, balances, skills and versions."""
    async with db.autocommit.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM transactions), (SELECT sum(credits) FROM users),"
                    " (SELECT count(*) FROM skills), (SELECT sum(version) FROM skills)"
                )
            )
        ).one()
        return tuple(row)
