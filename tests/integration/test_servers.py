"""The run talks to the servers its mode names (tests/support/servers.py).

With TEST_SERVERS=containers, the database and Redis the app is given are the containers'
published ports, not the machine's 5432 / 6379, and the servers answering there say they run
inside a container: CI's run proves with these that it used the containers.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import asyncpg
import redis as redis_sync

from skill_credits.settings import Settings
from tests.support import servers


async def test_the_database_is_the_servers_own(postgres_server, settings: Settings) -> None:
    if servers.mode() == "containers":
        assert postgres_server.container_id and postgres_server.image == servers.postgres_image()
    url = urlsplit(settings.database_url)
    assert (url.hostname, url.port) == postgres_server.address
    conn = await asyncpg.connect(settings.database_url)
    try:
        listens_on = await conn.fetchval("SELECT inet_server_port()")
        data = await conn.fetchval("SELECT current_setting('data_directory')")
    finally:
        await conn.close()
    if postgres_server.container_id is None:
        assert listens_on == url.port  # nothing between the tests and the server
    else:
        # Docker forwards the published port to 5432 inside the container, whose PGDATA it is
        published = servers.published_port(postgres_server.container_id, 5432)
        assert url.port == published != 5432
        assert listens_on == 5432
        assert data == "/var/lib/postgresql/data"


def test_redis_is_the_servers_own(redis_server, settings: Settings) -> None:
    if servers.mode() == "containers":
        assert redis_server.container_id and redis_server.image == servers.redis_image()
    url = urlsplit(settings.redis_url)
    assert (url.hostname, url.port) == redis_server.address
    client = redis_sync.Redis.from_url(settings.redis_url)
    try:
        listens_on = client.info("server")["tcp_port"]
    finally:
        client.close()
    if redis_server.container_id is None:
        assert listens_on == url.port
    else:
        published = servers.published_port(redis_server.container_id, 6379)
        assert url.port == published != 6379
        assert listens_on == 6379
