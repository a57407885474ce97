"""PostgreSQL and Redis as tests and benchmarks see them from outside the app: a connection
for a few statements, throwaway databases and key prefixes, API keys, the ledger's checks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

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
    """``base`` is a server URL without database name; on a Citus coordinator, the
    databases go on every node."""
    for server in await nodes(base):
        await execute(
            f"{server}/postgres",
            *(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)' for name in names),
        )


async def nodes(base: str) -> list[str]:
    """The server URLs of a Citus cluster whose coordinator is ``base`` (the workers its
    ``postgres`` database registers, after it), or ``[base]`` for a plain server."""
    async with connection(f"{base}/postgres") as conn:
        if not await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'citus'"):
            return [base]
        workers = await conn.fetch(
            "SELECT nodename, nodeport FROM pg_dist_node"
            " WHERE groupid <> 0 AND noderole = 'primary' ORDER BY nodeid"
        )
    parts = urlsplit(base)
    userinfo = parts.netloc.rpartition("@")[0]
    login = f"{userinfo}@" if userinfo else ""
    return [base, *(f"{parts.scheme}://{login}{w['nodename']}:{w['nodeport']}" for w in workers)]


async def create_citus_database(base: str, name: str, *, grown: bool = False) -> None:
    """The database ``name`` on every node of the cluster whose coordinator is ``base``,
    with the citus extension, and its nodes registered with its coordinator: what the
    operator of a cluster does once (docs/citus.md), before `skill-credits migrate`.
    ``grown``: the coordinator has the database already (it grew there as one server's)."""
    servers = await nodes(base)
    for n, server in enumerate(servers):
        if not (grown and n == 0):
            await execute(f"{server}/postgres", f'CREATE DATABASE "{name}"')
        await execute(f"{server}/{name}", "CREATE EXTENSION citus")
    coordinator = urlsplit(base)
    async with connection(f"{base}/{name}") as conn:
        await conn.execute(
            "SELECT citus_set_coordinator_host($1, $2)",
            coordinator.hostname,
            coordinator.port or 5432,
        )
        for server in servers[1:]:
            worker = urlsplit(server)
            await conn.execute("SELECT citus_add_node($1, $2)", worker.hostname, worker.port)


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
