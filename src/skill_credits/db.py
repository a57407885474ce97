"""The PostgreSQL engine, how a lost database becomes a clean 503, and the queries that
belong to no table (the readiness ping, keyset pagination)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.engine import Row
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.sql.elements import TextClause

from skill_credits.pagination import encode_cursor
from skill_credits.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        # A pooled connection may have died with a PostgreSQL that crashed or restarted
        # since it was last used; a ping at checkout replaces it instead of failing the
        # request that drew it. These routes are not the hot path (charges use the asyncpg
        # pool, which finds closed connections on acquire), so the round trip is cheap.
        pool_pre_ping=True,
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_command_timeout,
            "server_settings": {"application_name": "skill-credits"},
        },
    )


class Result(Protocol):
    """The answer of ``Connection.execute``: SQLAlchemy's result, or ``Statements``'."""

    def first(self) -> Any: ...

    def one(self) -> Any: ...

    def all(self) -> Sequence[Any]: ...

    def scalar(self) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...


class Connection(Protocol):
    """What every repository function takes: a connection that runs a ``text()`` statement.

    SQLAlchemy's ``AsyncConnection`` (``Database.connect()``, ``Database.transaction()``)
    and the hot path's asyncpg ``Statements`` (``Database.statements()``) both are one.
    """

    async def execute(self, statement: Any, params: Any = ..., /) -> Result: ...


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
        self.engine = create_engine(settings)
        self.autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        """Open the hot-path pool (lazily: no connection is made before the first charge)."""
        s = self.settings
        self._pool = await asyncpg.create_pool(
            s.asyncpg_dsn,
            min_size=0,
            max_size=s.db_fast_pool_size,
            timeout=s.db_connect_timeout,
            command_timeout=s.db_command_timeout,
            server_settings={"application_name": "skill-credits"},
            # Release costs no round trip: only single autocommit statements run here,
            # so a connection never carries a transaction or session state back.
            reset=_no_reset,
        )

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


class _Row:
    """Attribute access to an asyncpg record, like SQLAlchemy's Row."""

    __slots__ = ("_record",)

    def __init__(self, record: asyncpg.Record) -> None:
        self._record = record

    def __getattr__(self, name: str) -> Any:
        try:
            return self._record[name]
        except KeyError:
            raise AttributeError(name) from None


class _Result:
    __slots__ = ("_records",)

    def __init__(self, records: list[asyncpg.Record]) -> None:
        self._records = records

    def first(self) -> _Row | None:
        return _Row(self._records[0]) if self._records else None

    def one(self) -> _Row:
        if len(self._records) != 1:
            raise sa_exc.NoResultFound("expected exactly one row")
        return _Row(self._records[0])

    def all(self) -> list[_Row]:
        return [_Row(r) for r in self._records]

    def scalar(self) -> Any:
        return self._records[0][0] if self._records else None

    def __iter__(self) -> Iterator[_Row]:
        return iter(self.all())


_ASYNCPG = pg_asyncpg.dialect()
_compiled: dict[str, tuple[str, tuple[str, ...]]] = {}


def _compile(statement: TextClause) -> tuple[str, tuple[str, ...]]:
    found = _compiled.get(statement.text)
    if found is None:
        compiled = statement.compile(dialect=_ASYNCPG)
        found = _compiled[statement.text] = (str(compiled), tuple(compiled.positiontup or ()))
    return found


_NONE: Mapping[str, Any] = {}


class Statements:
    """A raw asyncpg connection that runs the ledger's ``text()`` statements.

    It is a ``Connection`` with SQLAlchemy's answers: rows with attribute access, and
    constraint and data errors raised as ``IntegrityError`` / ``DataError`` (with the
    asyncpg error as ``orig``). Each statement is its own transaction and runs as a
    prepared statement from asyncpg's per-connection cache: the hot path pays neither
    SQLAlchemy's result machinery nor a reset query on release (see BENCHMARKS.md).
    """

    __slots__ = ("conn",)

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def execute(self, statement: TextClause, params: Mapping[str, Any] = _NONE) -> _Result:
        sql, order = _compile(statement)
        try:
            return _Result(await self.conn.fetch(sql, *[params[name] for name in order]))
        except asyncpg.IntegrityConstraintViolationError as exc:
            raise sa_exc.IntegrityError(sql, None, exc) from exc
        except asyncpg.DataError as exc:
            raise sa_exc.DataError(sql, None, exc) from exc
        except asyncpg.InternalClientError as exc:
            # The server dropped this connection between two statements (a shutdown sends
            # an error to idle connections): throw it away, answer "unavailable".
            self.conn.terminate()
            raise sa_exc.DBAPIError(sql, None, exc, connection_invalidated=True) from exc


# SQLSTATE classes meaning "no usable server right now": 08 connection exception,
# 57P admin/crash shutdown and "cannot connect now" (starting up, shutting down).
UNAVAILABLE_SQLSTATES = ("08", "57P")


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL could not be reached or the connection broke."""
    if isinstance(exc, sa_exc.TimeoutError):  # pool checkout timed out
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if (sqlstate(exc) or "").startswith(UNAVAILABLE_SQLSTATES):
            return True
        return isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError)) and not isinstance(
            exc, sa_exc.IntegrityError
        )
    if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError)):
        state = getattr(exc, "sqlstate", None) or ""
        return state.startswith(UNAVAILABLE_SQLSTATES) or isinstance(
            exc, (asyncpg.InterfaceError, asyncpg.PostgresConnectionError)
        )
    return isinstance(exc, (OSError, TimeoutError, ConnectionError))


def constraint_name(exc: sa_exc.DBAPIError) -> str | None:
    """The name of the constraint an IntegrityError reports, when asyncpg gives it."""
    return getattr(exc.orig, "constraint_name", None) or getattr(
        getattr(exc.orig, "__cause__", None), "constraint_name", None
    )


def sqlstate(exc: sa_exc.DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None) or getattr(
        getattr(exc.orig, "__cause__", None), "sqlstate", None
    )


async def ping(db: Database) -> None:
    """One round trip to PostgreSQL (readiness); raises when it does not answer."""
    async with db.autocommit.connect() as conn:
        await conn.execute(text("SELECT 1"))


async def keyset_page(
    conn: AsyncConnection,
    table: str,
    columns: str,
    equal: dict[str, Any],
    before: int | None,
    limit: int,
) -> tuple[list[Row], str | None]:
    """Keyset pagination, newest first: up to ``limit`` rows where every ``equal`` column
    (skipped when None) matches its value, or any of a tuple of values.

    ``table``, ``columns`` and the keys of ``equal`` come from code, never from a client.
    A page costs the same deep in a log as at its start: ``seq < :before`` is an index
    range condition, never an OFFSET.
    """
    filters = {column: value for column, value in equal.items() if value is not None}
    where = [
        f"{column} = ANY(:{column})" if isinstance(value, tuple) else f"{column} = :{column}"
        for column, value in filters.items()
    ] or ["true"]
    if before is not None:
        where.append("seq < :before")
    rows = (
        await conn.execute(
            text(
                f"SELECT {columns}, seq FROM {table} WHERE {' AND '.join(where)}"
                " ORDER BY seq DESC LIMIT :limit"
            ),
            {**filters, "before": before, "limit": limit + 1},
        )
    ).all()
    next_cursor = encode_cursor(rows[limit - 1].seq) if len(rows) > limit else None
    return rows[:limit], next_cursor
