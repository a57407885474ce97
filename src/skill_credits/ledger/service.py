"""Money moves here. Each write is one statement in autocommit (its own transaction).

When a statement writes nothing, the failure path reads what it needs to answer
precisely (replay, 404, 403, 402) and, when the answer is "something changed under
us" (a new skill version, a concurrent hold), runs the statement again.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from skill_credits import errors
from skill_credits.cache import SkillCache
from skill_credits.db import Connect, Executes, constraint_name, sqlstate
from skill_credits.errors import ApiError
from skill_credits.ledger import repository as repo
from skill_credits.ledger.schemas import (
    CaptureIn,
    ChargeIn,
    CreditIn,
    Hold,
    HoldIn,
    RefundIn,
    Transaction,
    User,
)
from skill_credits.skills.schemas import Skill

MAX_ATTEMPTS = 5
IDEMPOTENCY_CONSTRAINTS = {"transactions_idempotency"}


@dataclass(frozen=True, slots=True)
class Written:
    transaction: Transaction
    replayed: bool = False


def request_hash(
    method: str, path: str, body: msgspec.Struct | None, key: str | None
) -> bytes | None:
    """What makes two requests "the same" for an Idempotency-Key: route, path, decoded body.

    None without a key: only a keyed request is ever compared with another, so a keyless
    one neither computes nor stores it."""
    if key is None:
        return None
    encoded = msgspec.json.encode(body) if body is not None else b""
    return hashlib.sha256(f"{method} {path}\n".encode() + encoded).digest()


async def _replay(conn: Executes, user_id: str, key: str | None, digest: bytes | None):
    """The stored answer for ``key``, 422 if it was used for another request, else None."""
    if key is None:
        return None
    row = await repo.by_idempotency_key(conn, user_id, key)
    if row is None:
        return None
    if bytes(row.request_hash) != digest:
        raise errors.idempotency_key_reused()
    return Written(repo.transaction_from_row(row), replayed=True)


def _is_unique_violation(exc: sa_exc.IntegrityError, names: set[str]) -> bool:
    return sqlstate(exc) == "23505" and constraint_name(exc) in names


def _overflow(exc: sa_exc.DBAPIError) -> bool:
    return sqlstate(exc) == "22003"


def _skill_from_row(row: Any) -> Skill:
    """A skill from a row of ``s_``-prefixed columns (charge result, refusal facts)."""
    return Skill(
        id=row.s_id,
        name=row.s_name,
        display_name=row.s_display_name,
        description=row.s_description,
        cost=row.s_cost,
        is_active=getattr(row, "s_is_active", True),
        version=row.s_version,
        created_at=row.s_created_at,
        updated_at=row.s_updated_at,
    )


async def _priced_write(
    connect: Connect,
    cache: SkillCache,
    *,
    skill_name: str,
    user_id: str,
    units: int,
    params: dict[str, Any],
    write: Callable[[Executes, dict[str, Any]], Awaitable[Any]],
    explain: Any,
    replay: Callable[[Executes], Awaitable[Any]],
    unique: set[str],
    check_caller: Callable[[], Awaitable[None]] | None = None,
) -> tuple[Any, Skill | None]:
    """Run a statement priced at the skill's version the cache knows, and explain a refusal.

    The cache is read before a connection is taken and refreshed after it is given back,
    so no connection waits on Redis. The statement is the judge: it writes only at the
    version it was given. When it writes nothing, one query (``explain``) reads what the
    answer needs, in the contract's order: a revoked key (401), a replay, skill 404, 403,
    user 404, 402 - or finds that the price or a hold moved meanwhile, and the statement
    runs again.
    """
    cached = await cache.get(skill_name)
    newer: Skill | None = None  # found in PostgreSQL when the cache was behind
    try:
        async with connect() as conn:
            params["version"] = cached.version if cached is not None else None
            for _ in range(MAX_ATTEMPTS):
                try:
                    row = await write(conn, params)
                except sa_exc.IntegrityError as exc:
                    if not _is_unique_violation(exc, unique):
                        raise
                    row = None  # a concurrent request with this key won; answer as it did
                if row is not None:
                    return row, cached
                facts = await repo.refusal(conn, explain, params)
                if check_caller is not None and facts.key_live is not True:
                    await check_caller()  # a revoked key writes nothing: answer 401 first
                if facts.key_used and (done := await replay(conn)) is not None:
                    return done, cached
                if facts.s_id is None:
                    raise errors.skill_not_found(skill_name)
                if params["version"] is not None and facts.s_version != params["version"]:
                    # the cache was behind: price at the current version
                    newer = cached = _skill_from_row(facts)
                    params["version"] = newer.version
                    continue
                if not facts.s_is_active:
                    raise errors.skill_disabled(skill_name)
                if facts.u_credits is None:
                    raise errors.user_not_found(user_id)
                required = facts.s_cost * units
                available = facts.u_credits - facts.u_reserved
                if available < required:
                    raise errors.insufficient_credits(facts.u_credits, available, required)
                # A hold changed between the statement and this read: try again.
    finally:
        if newer is not None:
            await cache.put(newer)  # once the connection is back: none waits on Redis
    raise errors.contention()


async def charge(
    connect: Connect,
    cache: SkillCache,
    data: ChargeIn,
    key: str | None,
    digest: bytes | None,
    *,
    api_key_id: str,
    check_caller: Callable[[], Awaitable[None]] | None = None,
) -> Written:
    params = {
        "api_key_id": api_key_id,
        "skill": data.skill,
        "user_id": data.user_id,
        "units": data.units,
        "description": data.description,
        "key": key,
        "hash": digest,
    }
    row, cached = await _priced_write(
        connect,
        cache,
        skill_name=data.skill,
        user_id=data.user_id,
        units=data.units,
        params=params,
        write=repo.charge,
        explain=repo.REFUSAL_OF_CHARGE,
        replay=lambda conn: _replay(conn, data.user_id, key, digest),
        unique=IDEMPOTENCY_CONSTRAINTS,
        check_caller=check_caller,
    )
    if isinstance(row, Written):
        return row
    if cached is None or cached.version != row.s_version:
        await cache.put(_skill_from_row(row))
    return Written(repo.transaction_from_row(row))


async def add_credits(
    conn: AsyncConnection, user_id: str, data: CreditIn, key: str | None, digest: bytes | None
) -> Written:
    params = {
        "user_id": user_id,
        "type": data.type,
        "amount": data.amount,
        "description": data.description,
        "key": key,
        "hash": digest,
    }
    for _ in range(MAX_ATTEMPTS):
        try:
            row = await repo.credit(conn, params)
        except sa_exc.IntegrityError as exc:
            if not _is_unique_violation(exc, IDEMPOTENCY_CONSTRAINTS):
                raise
            row = None
        except sa_exc.DBAPIError as exc:
            if _overflow(exc):
                raise errors.validation_error(
                    "amount", "the balance would pass the 64-bit range"
                ) from None
            raise
        if row is not None:
            return Written(repo.transaction_from_row(row))
        if (done := await _replay(conn, user_id, key, digest)) is not None:
            return done
        if data.amount > 0:
            continue  # only a concurrent key could stop an upsert
        user = await repo.get_user(conn, user_id)
        if user is None:
            raise errors.user_not_found(user_id)
        if user.available < -data.amount:
            raise errors.insufficient_credits(user.credits, user.available, -data.amount)
    raise errors.contention()


async def refund(
    conn: AsyncConnection, tx_id: str, data: RefundIn, key: str | None, digest: bytes | None
) -> Written:
    params = {"id": tx_id, "description": data.description, "key": key, "hash": digest}
    for _ in range(MAX_ATTEMPTS):
        try:
            row = await repo.refund(conn, params)
        except sa_exc.IntegrityError as exc:
            if not _is_unique_violation(
                exc, IDEMPOTENCY_CONSTRAINTS | {"transactions_refund_once"}
            ):
                raise
            row = None
        except sa_exc.DBAPIError as exc:
            if _overflow(exc):
                raise errors.validation_error(
                    "amount", "the balance would pass the 64-bit range"
                ) from None
            raise
        if row is not None:
            return Written(repo.transaction_from_row(row))
        original = await repo.get_transaction(conn, tx_id)
        if original is None:
            raise errors.transaction_not_found(tx_id)
        if (done := await _replay(conn, original.user_id, key, digest)) is not None:
            return done
        _check_refundable(original, tx_id)
    raise errors.contention()


def _check_refundable(row: Any, tx_id: str) -> None:
    """409 unless the transaction ``row`` is a CONSUMPTION not refunded yet."""
    if row.type != "CONSUMPTION":
        raise errors.not_refundable(row.type)
    if row.refunded:
        raise errors.already_refunded(tx_id)


@dataclass(frozen=True, slots=True)
class HoldWritten:
    hold: Hold
    replayed: bool = False


async def _replay_hold(conn: AsyncConnection, user_id: str, key: str | None, digest: bytes | None):
    if key is None:
        return None
    row = await repo.hold_by_idempotency_key(conn, user_id, key)
    if row is None:
        return None
    if bytes(row.request_hash) != digest:
        raise errors.idempotency_key_reused()
    return HoldWritten(repo.hold_from_row(row), replayed=True)


async def create_hold(
    connect: Connect, cache: SkillCache, data: HoldIn, key: str | None, digest: bytes | None
) -> HoldWritten:
    params = {
        "skill": data.skill,
        "user_id": data.user_id,
        "units": data.units,
        "ttl": data.ttl_seconds,
        "description": data.description,
        "key": key,
        "hash": digest,
    }
    row, _ = await _priced_write(
        connect,
        cache,
        skill_name=data.skill,
        user_id=data.user_id,
        units=data.units,
        params=params,
        write=repo.hold,
        explain=repo.REFUSAL_OF_HOLD,
        replay=lambda conn: _replay_hold(conn, data.user_id, key, digest),
        unique={"holds_idempotency"},
    )
    if isinstance(row, HoldWritten):
        return row
    return HoldWritten(repo.hold_from_row(row))


async def capture(
    conn: AsyncConnection, hold_id: str, data: CaptureIn, key: str | None, digest: bytes | None
) -> Written:
    current = await repo.get_hold(conn, hold_id)
    if current is None:
        raise errors.hold_not_found(hold_id)
    units = data.units if data.units is not None else current.units
    if units > current.units:
        raise errors.validation_error("units", f"must be at most the {current.units} reserved")
    params = {
        "id": hold_id,
        "tx_id": str(uuid.uuid4()),
        "units": units,
        "description": data.description,
        "key": key,
        "hash": digest,
    }
    try:
        row = await repo.capture(conn, params)
    except sa_exc.IntegrityError as exc:
        if not _is_unique_violation(exc, IDEMPOTENCY_CONSTRAINTS):
            raise
        row = None
    if row is not None:
        return Written(repo.transaction_from_row(row))
    if (done := await _replay(conn, current.user_id, key, digest)) is not None:
        return done
    latest = await repo.get_hold(conn, hold_id)
    raise errors.hold_not_active(latest.status)


async def release(conn: AsyncConnection, hold_id: str) -> Hold:
    row = await repo.release(conn, hold_id)
    if row is not None:
        return repo.hold_from_row(row)
    current = await repo.get_hold(conn, hold_id)
    if current is None:
        raise errors.hold_not_found(hold_id)
    raise errors.hold_not_active(current.status)


# ---- reads the API and the admin UI share --------------------------------------------


async def get_user(conn: AsyncConnection, user_id: str) -> User:
    user = await repo.get_user(conn, user_id)
    if user is None:
        raise errors.user_not_found(user_id)
    return user


async def transactions(
    conn: AsyncConnection, user_id: str, limit: int, before: int | None, tx_type: str | None
) -> tuple[list[Transaction], str | None]:
    """One page of a user's log, newest first; 404 for a user who does not exist."""
    await get_user(conn, user_id)
    return await repo.page(conn, user_id, limit, before, tx_type)


async def get_transaction(conn: AsyncConnection, tx_id: str) -> Transaction:
    row = await repo.get_transaction(conn, tx_id)
    if row is None:
        raise errors.transaction_not_found(tx_id)
    return repo.transaction_from_row(row)


async def refundable(conn: AsyncConnection, tx_id: str) -> tuple[Transaction, ApiError | None]:
    """The transaction, and the error ``refund`` would answer for it now (None: it would
    refund it)."""
    row = await repo.get_transaction(conn, tx_id)
    if row is None:
        raise errors.transaction_not_found(tx_id)
    try:
        _check_refundable(row, tx_id)
    except ApiError as exc:
        return repo.transaction_from_row(row), exc
    return repo.transaction_from_row(row), None


async def get_hold(conn: AsyncConnection, hold_id: str) -> Hold:
    row = await repo.get_hold(conn, hold_id)
    if row is None:
        raise errors.hold_not_found(hold_id)
    return repo.hold_from_row(row)


@dataclass(frozen=True, slots=True)
class UserLog:
    """A user, one page of their log, and what its rows refer to (for the admin UI)."""

    user: User
    items: list[Transaction]
    next_cursor: str | None
    refunded: set[str]  # the page's charges that have a refund
    charges: dict[str, Any]  # the charges the page's refunds refunded, by id, with ``seq``


async def user_log(conn: AsyncConnection, user_id: str, limit: int, before: int | None) -> UserLog:
    user = await get_user(conn, user_id)
    items, next_cursor = await repo.page(conn, user_id, limit, before, None)
    refunded = await repo.refunded_among(conn, [t.id for t in items])
    charges = await repo.charges_among(conn, [t.refund_of for t in items if t.refund_of])
    return UserLog(user, items, next_cursor, refunded, charges)
