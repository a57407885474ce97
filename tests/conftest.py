"""Test fixtures: a throwaway database and Redis key prefix per run, real servers only.

Only fixtures and hooks live here; what they are built from is in tests/support/. Which
PostgreSQL and Redis: tests/support/servers.py (TEST_SERVERS=local, the default, takes the
machine's own or TEST_DATABASE_URL / TEST_REDIS_URL; TEST_SERVERS=containers starts them with
testcontainers). The run creates its own database and drops it at the end, and writes Redis
keys only under its own prefix, which it deletes at the end.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from litestar.testing import AsyncTestClient

from skill_credits.app import create_app
from skill_credits.auth import create_key, revoke_key
from skill_credits.db import Database
from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from tests.support import servers
from tests.support.api import Api, Keys
from tests.support.databases import (
    connection,
    create_citus_database,
    delete_prefix,
    drop_databases,
)
from tests.support.run import run_in_thread


def pytest_configure(config) -> None:
    servers.mode()  # an unknown TEST_SERVERS stops the run before it starts


def pytest_collection_modifyitems(config, items) -> None:
    """On a Citus cluster (TEST_SERVERS=citus), what is about one server's plans or
    processes does not apply: each worker plans its own shards."""
    if not servers.citus():
        return
    skip = pytest.mark.skip(reason="one_server: not about a Citus cluster")
    for item in items:
        if "one_server" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config) -> str:
    return f"servers: TEST_SERVERS={servers.mode()} (tests/support/servers.py)"


SERVERS: list[servers.Server] = []


def pytest_terminal_summary(terminalreporter) -> None:
    """Say which servers the run used: in containers mode, the containers' ids and ports."""
    for server in SERVERS:
        terminalreporter.write_line(f"servers: {server.describe()}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[servers.Server]:
    with servers.postgres() as server:
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
    if servers.citus():
        run_in_thread(asyncio.run, create_citus_database(pg_base, name))
    run_in_thread(migrate, Settings(database_url=url))  # creates the database, upgrades to head
    yield url

    async def drop() -> None:
        """This run's database, and any other this run made (they share its prefix)."""
        async with connection(f"{pg_base}/postgres") as conn:
            mine = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $2",
                name,
                f"{name}\\_%",
            )
        await drop_databases(pg_base, *(row["datname"] for row in mine))

    run_in_thread(asyncio.run, drop())


@pytest.fixture(scope="session")
def redis_prefix(redis_url: str, run_id: str) -> Iterator[str]:
    prefix = f"sc_test_{run_id}:"
    yield prefix
    delete_prefix(redis_url, prefix)


@pytest.fixture
def fresh_database(pg_base: str, run_id: str):
    """A second throwaway database that the CLI itself must create."""
    name = f"sc_test_{run_id}_cli_{uuid.uuid4().hex[:6]}"
    yield name, f"{pg_base}/{name}"
    run_in_thread(asyncio.run, drop_databases(pg_base, name))


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, redis_prefix: str) -> Settings:
    return Settings(database_url=database_url, redis_url=redis_url, redis_prefix=redis_prefix)


@pytest.fixture(scope="session")
def server_env(settings: Settings) -> dict[str, str]:
    """Environment for a `skill-credits` child process using this run's resources."""
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_PREFIX": settings.redis_prefix,
    }
    if servers.citus():
        # Three nodes on this machine's two cores: a hot user's charges queue longer for a
        # connection than the default wait (docs/citus.md, "Tuning").
        env["DB_POOL_TIMEOUT"] = "5"
    return env


@pytest.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    database = Database(settings)
    await database.start()
    yield database
    await database.dispose()


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


@pytest.fixture(scope="session")
def api(client: AsyncTestClient, keys: Keys) -> Api:
    """The run's app in-process, called with the run's keys (a stateless helper: one for all)."""
    return Api(client, keys)
