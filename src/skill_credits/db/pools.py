"""The connections: the ``Database`` with its two pools (SQLAlchemy's, and the hot
path's lean asyncpg pool), and the lending of an asyncpg connection as ``Statements``."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from skill_credits.db.adapter import Connection, Statements
from skill_credits.db.shards import ShardMap
from skill_credits.settings import Settings


class Hosts:
    """The hosts DATABASE_URL names, taken in turn: each new connection goes to the next
    one (the others behind it in the same DSN, so a host that does not answer is passed
    over). One host: always that one. A Citus cluster runs a distributed query, or
    delegates a call, from any of its nodes, so no node carries every connection."""

    def __init__(self, settings: Settings) -> None:
        self._dsns = settings.dsns()
        self._turn = itertools.count()

    def __len__(self) -> int:
        return len(self._dsns)

    def dsn(self) -> str:
        """The DSN of the next connection: every host, starting at the next one's turn."""
        start = next(self._turn) % len(self._dsns)
        ordered = self._dsns[start:] + self._dsns[:start]
        first, _, tail = ordered[0].partition("://")[2].partition("/")
        login = first.rpartition("@")[0]
        hosts = [dsn.partition("://")[2].partition("/")[0].rpartition("@")[2] for dsn in ordered]
        return f"postgresql://{login}{'@' if login else ''}{','.join(hosts)}/{tail}"

    async def connect(self, *_args: Any, **kwargs: Any) -> asyncpg.Connection:
        """asyncpg.connect at the next host (a pool's ``connect``; its DSN argument is
        this object's own)."""
        return await asyncpg.connect(self.dsn(), **kwargs)


def _connect_args(settings: Settings) -> dict[str, Any]:
    return {
        "timeout": settings.db_connect_timeout,
        "command_timeout": settings.db_command_timeout,
        "server_settings": {"application_name": "skill-credits"},
    }


def create_engine(settings: Settings, hosts: Hosts | None = None) -> AsyncEngine:
    spread = {}
    if hosts is not None and len(hosts) > 1:
        spread["async_creator"] = lambda: hosts.connect(**_connect_args(settings))
    return create_async_engine(
        settings.sqlalchemy_url,
        **spread,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        # A pooled connection may have died with a PostgreSQL that crashed or restarted
        # since it was last used; a ping at checkout replaces it instead of failing the
        # request that drew it. These routes are not the hot path (charges use the asyncpg
        # pool, which finds closed connections on acquire), so the round trip is cheap.
        pool_pre_ping=True,
        connect_args=_connect_args(settings),
    )


log = logging.getLogger(__name__)

# How long a worker trusts the shard map it read (a rebalance moves shards meanwhile).
SHARD_MAP_SECONDS = 30.0


class Database:
    """The one way services reach PostgreSQL; three kinds of connection, one interface.

    - ``statements()``: the lean asyncpg pool, for single autocommit statements on the
      hot path (the charge; see ``Statements``).
    - ``connect()``: a SQLAlchemy connection in autocommit: each statement its own
      transaction (one statement, one round trip).
    - ``transaction()``: a SQLAlchemy connection in one explicit transaction, committed
      when the block ends without an error (skill edits with their history rows).

    Each is used as ``async with db.X() as conn`` and yields a ``Connection``.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hosts = Hosts(settings)
        self.engine = create_engine(settings, self.hosts)
        self.autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pool: asyncpg.Pool | None = None
        self._shards: ShardMap | None = None
        self._shards_read_at: float | None = None
        self._shards_reading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Open the hot-path pool (lazily: no connection is made before the first charge)."""
        s = self.settings
        spread = {"connect": self.hosts.connect} if len(self.hosts) > 1 else {}
        self._pool = await asyncpg.create_pool(
            s.asyncpg_dsn,
            **spread,
            min_size=0,
            max_size=s.db_fast_pool_size,
            timeout=s.db_connect_timeout,
            command_timeout=s.db_command_timeout,
            server_settings={"application_name": "skill-credits"},
            # Release costs no round trip: only single autocommit statements run here,
            # so a connection never carries a transaction or session state back.
            reset=_no_reset,
        )

    async def shard_map(self) -> ShardMap | None:
        """Where each user's rows live on a Citus cluster (None on one server), read again
        when ``SHARD_MAP_SECONDS`` have passed: after a rebalance, a stale map costs speed,
        never correctness (db/shards.py)."""
        if self._shards_stale():
            async with self.connect() as conn:
                self._shards = await ShardMap.load(conn)
            self._shards_read_at = time.monotonic()
        return self._shards

    def known_shard_map(self) -> ShardMap | None:
        """The map as last read, without waiting (the batchers' view); a stale one is read
        again in the background meanwhile, and its first reading is awaited by nothing."""
        if self._shards_stale() and self._shards_reading is None:
            self._shards_reading = asyncio.create_task(self._read_shard_map())
        return self._shards

    async def _read_shard_map(self) -> None:
        try:
            await self.shard_map()
        except Exception:  # noqa: BLE001 - unreachable now: the next look tries again
            log.warning("the shard map could not be read", exc_info=True)
        finally:
            self._shards_reading = None

    def _shards_stale(self) -> bool:
        read = self._shards_read_at
        return read is None or time.monotonic() - read > SHARD_MAP_SECONDS

    def connect(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        return self.autocommit.connect()

    def transaction(self) -> contextlib.AbstractAsyncContextManager[Connection]:
        return self.engine.begin()

    def statements(self) -> _Lend:
        """A connection of the hot-path pool for ``async with``, or 503 after the pool timeout."""
        if self._pool is None:
            raise RuntimeError("Database.start() was not called")
        return _Lend(self._pool, self.settings.db_pool_timeout)

    async def dispose(self) -> None:
        if self._shards_reading is not None:  # a map read still out: not needed any more
            self._shards_reading.cancel()
        if self._pool is not None:
            await self._pool.close()
        await self.engine.dispose()


async def _no_reset(_: asyncpg.Connection) -> None:
    return None


class _Lend:
    """``async with db.statements() as conn``: a plain class, not a generator-based
    context manager, since every charge goes through it."""

    __slots__ = ("_pool", "_timeout", "_conn")

    def __init__(self, pool: asyncpg.Pool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: asyncpg.Connection | None = None

    async def __aenter__(self) -> Statements:
        # asyncio.timeout, not acquire(timeout=): that one runs the wait in a task of its own
        async with asyncio.timeout(self._timeout):
            self._conn = await self._pool.acquire()
        return Statements(self._conn)

    async def __aexit__(self, *_: object) -> None:
        await self._pool.release(self._conn)
