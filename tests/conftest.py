"""Test resources: a throwaway database and Redis key prefix per run, real servers only.

Which PostgreSQL and Redis: tests/servers.py (TEST_SERVERS=local, the default, takes the
machine's own or TEST_DATABASE_URL / TEST_REDIS_URL; TEST_SERVERS=containers starts them with
testcontainers). The run creates its own database and drops it at the end, and writes Redis
keys only under its own prefix, which it deletes at the end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import pytest
import redis as redis_sync
from litestar.testing import AsyncTestClient

from skill_credits.app import create_app
from skill_credits.auth import create_key, revoke_key
from skill_credits.db import Database
from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from tests import servers


def run_in_thread(fn, *args):
    """Run blocking code (which may call asyncio.run) on a fresh thread.

    Keeps fixtures working whatever event loop the calling thread has running
    (pytest-asyncio's, or the one Playwright's sync API starts).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def pytest_configure(config) -> None:
    servers.mode()  # an unknown TEST_SERVERS stops the run before it starts


def pytest_report_header(config) -> str:
    return f"servers: TEST_SERVERS={servers.mode()} (tests/servers.py)"


SERVERS: list[servers.Server] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which servers the run used: in containers mode, the containers' ids and ports."""
    for server in SERVERS:
        terminalreporter.write_line(f"servers: {server.describe()}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.Server]:
    with servers.postgres(run_in_thread) as server:
        SERVERS.append(server)
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[servers.Server]:
    with servers.redis() as server:
        SERVERS.append(server)
        yield server


@pytest.fixture(scope="session")
def pg_base(postgres_server: servers.Server) -> str:
    """A server URL without a database name."""
    return postgres_server.url


@pytest.fixture(scope="session")
def redis_url(redis_server: servers.Server) -> str:
    return redis_server.url


@pytest.fixture(scope="session")
def run_id() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def database_url(pg_base: str, run_id: str) -> Iterator[str]:
    name = f"sc_test_{run_id}"
    url = f"{pg_base}/{name}"
    run_in_thread(migrate, Settings(database_url=url))  # creates the database, upgrades to head
    yield url

    async def drop() -> None:
        """This run's database, and any other this run made (they share its prefix)."""
        conn = await asyncpg.connect(f"{pg_base}/postgres")
        try:
            mine = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $2",
                name,
                f"{name}\\_%",
            )
            for row in mine:
                await conn.execute(f'DROP DATABASE IF EXISTS "{row["datname"]}" WITH (FORCE)')
        finally:
            await conn.close()

    run_in_thread(asyncio.run, drop())


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str, run_id: str) -> Iterator[str]:
    prefix = f"sc_test_{run_id}:"
    yield prefix
    client = redis_sync.Redis.from_url(redis_url)
    for key in client.scan_iter(match=f"{prefix}*", count=500):
        client.delete(key)


@pytest.fixture
def fresh_database(pg_base: str, run_id: str):
    """A second throwaway database that the CLI itself must create."""
    name = f"sc_test_{run_id}_cli_{uuid.uuid4().hex[:6]}"
    yield name, f"{pg_base}/{name}"

    async def drop() -> None:
        conn = await asyncpg.connect(f"{pg_base}/postgres")
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    run_in_thread(asyncio.run, drop())


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, redis_prefix=redis_prefix)


@pytest.fixture(scope="session")
def server_env(settings: Settings) -> dict[str, str]:
    """Environment for a `skill-credits` child process using this run's resources."""
    return {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix,
    }


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    await database.start()
    yield database
    await database.dispose()


@dataclass(frozen=True)
class Keys:
    admin: str
    service: str
    revoked: str
    admin_name: str

    def auth(self, role: str | None) -> dict[str, str]:
        token = {"admin": self.admin, "service": self.service, "revoked": self.revoked}.get(
            role or ""
        )
        return {"Authorization": f"Bearer {token}"} if token else {}


@pytest.fixture(scope="session")
async def keys(db: Database, run_id: str) -> Keys:
    async with db.engine.begin() as conn:
        admin = await create_key(conn, f"admin-{run_id}", "admin")
        service = await create_key(conn, f"service-{run_id}", "service")
        revoked = await create_key(conn, f"revoked-{run_id}", "admin")
        await revoke_key(conn, revoked.name)
    return Keys(admin.token, service.token, revoked.token, admin.name)


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[AsyncTestClient]:
    async with AsyncTestClient(app=create_app(settings), timeout=30) as c:
        yield c


def unique(prefix: str = "U") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12].upper()}"
