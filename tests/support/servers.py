"""Which PostgreSQL and Redis a test run uses, and what it can show of them.

TEST_SERVERS picks them:

- ``local`` (the default, a developer's quick run): TEST_DATABASE_URL / TEST_REDIS_URL, else
  the machine's own servers on 127.0.0.1:5432 and :6379; where one of them does not answer and
  Docker exists, a container stands in for it.
- ``containers``: both run in containers that testcontainers starts for the run and removes at
  its end, from TEST_POSTGRES_IMAGE / TEST_REDIS_IMAGE (the official postgres:15 and redis:7 by
  default; CI passes the ones scripts/build-images.sh builds without a registry). A Docker engine
  that does not answer is an error here, never a quiet fallback to the local servers.

- ``citus``: PostgreSQL is a Citus cluster's coordinator, TEST_CITUS_URL (by default the one
  scripts/citus-cluster.sh starts on 127.0.0.1:9700); the run's database is made on every node
  with the extension and the nodes registered (databases.create_citus_database), so
  `skill-credits migrate` distributes it. Redis as in ``local``.

Tests that stop or restart servers start processes of their own (processes.py) either way.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis as redis_sync

from tests.support.run import run_in_thread

LOCAL_PG = "postgresql://127.0.0.1:5432"
LOCAL_REDIS = "redis://127.0.0.1:6379/0"
MODES = ("local", "containers", "citus")
LOCAL_CITUS = "postgresql://postgres@127.0.0.1:9700"


def mode() -> str:
    chosen = os.environ.get("TEST_SERVERS", "local")
    if chosen not in MODES:
        raise pytest.UsageError(f"TEST_SERVERS={chosen!r}: expected one of {', '.join(MODES)}")
    return chosen


def postgres_image() -> str:
    return os.environ.get("TEST_POSTGRES_IMAGE", "postgres:15")


def redis_image() -> str:
    return os.environ.get("TEST_REDIS_IMAGE", "redis:7")


@dataclass(frozen=True)
class Server:
    """One server the run talks to: where it answers, and its container if it runs in one."""

    kind: str
    url: str  # PostgreSQL: a server URL without database name; Redis: the full URL
    container_id: str | None = None
    image: str | None = None

    @property
    def address(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "", parts.port or 0

    def describe(self) -> str:
        host, port = self.address
        if self.container_id is None:
            return f"{self.kind} at {host}:{port}: a server of this machine"
        return f"{self.kind} at {host}:{port}: container {self.container_id[:12]} ({self.image})"


def published_port(container_id: str, port: int) -> int:
    """The host port Docker publishes the container's `port` on, as the engine itself says."""
    import docker

    client = docker.from_env()
    try:
        attrs = client.containers.get(container_id).attrs
    finally:
        client.close()
    return int(attrs["NetworkSettings"]["Ports"][f"{port}/tcp"][0]["HostPort"])


def _pg_answers(base: str) -> bool:
    async def probe() -> bool:
        try:
            conn = await asyncpg.connect(f"{base}/postgres", timeout=2)
        except Exception:  # noqa: BLE001
            return False
        await conn.close()
        return True

    return run_in_thread(asyncio.run, probe())


def _redis_answers(url: str) -> bool:
    try:
        return redis_sync.Redis.from_url(url, socket_timeout=1).ping()
    except Exception:  # noqa: BLE001
        return False


def _docker_answers() -> bool:
    try:
        import docker

        client = docker.from_env(timeout=5)
        try:
            return client.ping()
        finally:
            client.close()
    except Exception:  # noqa: BLE001
        return False


def _need_docker(why: str) -> None:
    if not _docker_answers():
        pytest.exit(f"{why}, and no Docker engine answers for testcontainers", returncode=2)


def _local(kind: str, url: str, answers: Callable[[str], bool]) -> bool:
    """Whether the run uses the machine's own server at ``url``; if not, a container stands
    in for it, and the run stops here when no Docker engine answers."""
    if mode() in ("local", "citus"):
        if answers(url):
            return True
        _need_docker(f"no {kind} at {url}")
    else:
        _need_docker("TEST_SERVERS=containers")
    return False


def citus() -> bool:
    """Whether the run's PostgreSQL is a Citus cluster."""
    return mode() == "citus"


@contextmanager
def postgres() -> Iterator[Server]:
    if citus():
        base = os.environ.get("TEST_CITUS_URL", LOCAL_CITUS).rstrip("/")
        if not _pg_answers(base):
            pytest.exit(f"TEST_SERVERS=citus: no Citus coordinator at {base}", returncode=2)
        yield Server("Citus coordinator", base)
        return
    base = os.environ.get("TEST_DATABASE_URL", LOCAL_PG).rstrip("/")
    if _local("PostgreSQL", base, _pg_answers):
        yield Server("PostgreSQL", base)
        return
    from testcontainers.community.postgres import PostgresContainer

    image = postgres_image()
    with PostgresContainer(image, driver=None) as pg:
        base = pg.get_connection_url().rsplit("/", 1)[0]
        yield Server("PostgreSQL", base, pg.get_wrapped_container().id, image)


@contextmanager
def redis() -> Iterator[Server]:
    url = os.environ.get("TEST_REDIS_URL", LOCAL_REDIS)
    if _local("Redis", url, _redis_answers):
        yield Server("Redis", url)
        return
    from testcontainers.community.redis import RedisContainer

    image = redis_image()
    with RedisContainer(image) as r:
        url = f"redis://{r.get_container_host_ip()}:{r.get_exposed_port(6379)}/0"
        yield Server("Redis", url, r.get_wrapped_container().id, image)
