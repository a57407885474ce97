"""The PostgreSQL engine, and how a lost database becomes a clean 503."""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from skill_credits.settings import Settings


def create_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        connect_args={
            "timeout": settings.db_connect_timeout,
            "command_timeout": settings.db_command_timeout,
            "server_settings": {"application_name": "skill-credits"},
        },
    )


class Database:
    """Two views of one pool.

    ``autocommit`` runs each statement as its own transaction (the charge path: one
    statement, one round trip). ``engine.begin()`` runs several statements in one
    explicit transaction (skill edits with their history rows).
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def dispose(self) -> None:
        await self.engine.dispose()


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
