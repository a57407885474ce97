"""What a repository function talks to: the ``Connection`` and ``Result`` protocols,
and ``Statements``, the hot path's asyncpg connection answering as SQLAlchemy does
(rows with attribute access, SQLAlchemy's errors)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

import asyncpg
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg
from sqlalchemy.sql.elements import TextClause


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
