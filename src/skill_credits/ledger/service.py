"""Money moves here. Each write is one call of a database function, in autocommit.

The functions (``ledger/sql/``) lock the user, write off what has expired, do the work
and return the outcome (a charge that passes every check is a single statement):
written, or which check refused it with the facts the answer needs, in the contract's
order. This module only maps an outcome to the
answer; it never reads again to find out why nothing was written.

A charge and a hold are priced (``pricing.py``): they run at the skill version the cache
knows, and again at PostgreSQL's when the function finds the cache behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import exc as sa_exc

from skill_credits import errors
from skill_credits.db import Database
from skill_credits.db.failures import sqlstate
from skill_credits.errors import ApiError
from skill_credits.ledger import repository as repo
from skill_credits.ledger.batch import Batches
from skill_credits.ledger.idempotency import same_request, unless_raced
from skill_credits.ledger.limited import LimitedUsers
from skill_credits.ledger.pricing import Price, attempts
from skill_credits.ledger.schemas import (
    CaptureIn,
    ChargeIn,
    CreditIn,
    Grant,
    Hold,
    HoldIn,
    RefundIn,
    Transaction,
    User,
    expiry_passed,
)
from skill_credits.limits import repository as limits_repo
from skill_credits.limits.schemas import Limit
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.repository import skill_from_row


@dataclass(frozen=True, slots=True)
class Written:
    transaction: Transaction
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class HoldWritten:
    hold: Hold
    replayed: bool = False


class KeyNotLive(ApiError):
    """The caller's API key was revoked: a charge writes nothing for it. The endpoint
    confirms the key (which also forgets it in the worker's key cache) and answers 401."""

    def __init__(self) -> None:
        super().__init__(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def call_outcome(statement: Any) -> Any:
    """The outcome row of a ledger function; a balance past 64 bits is a 400."""
    try:
        return await statement
    except sa_exc.DBAPIError as exc:
        if sqlstate(exc) == "22003":
            raise errors.validation_error(
                "amount", "the balance would pass the 64-bit range"
            ) from None
        raise


def refused(row: Any, subject: str) -> ApiError:
    """The answer to a refusal outcome; ``subject`` names what the request was about
    (the skill, user, transaction or hold its 404 names)."""
    outcome = row.outcome
    if outcome == "insufficient":
        return errors.insufficient_credits(row.credits, row.available, row.required)
    if outcome == "limited":
        return spend_limit_exceeded(row.lim, row.required)
    if outcome == "not_refundable":
        return errors.not_refundable(row.type)
    if outcome == "hold_not_active":
        return errors.hold_not_active(getattr(row, "hold_status", None) or row.status)
    about = REFUSALS.get(outcome)
    if about is None:
        raise RuntimeError(f"unknown ledger outcome {outcome!r}")
    return about(subject)


def spend_limit_exceeded(lim: str, required: int) -> ApiError:
    """429 for the limit ``lim`` (its JSON, as the database made it), with Retry-After:
    whole seconds until it resets, rounded up, at least 1."""
    limit = limits_repo.limit_from_json(lim)
    wait = (limit.resets_at - datetime.now(UTC)).total_seconds()
    return errors.spend_limit_exceeded(
        msgspec.to_builtins(limit), required, max(1, math.ceil(wait))
    )


# The refusals whose answer names only what the request was about.
REFUSALS = {
    "skill_not_found": errors.skill_not_found,
    "skill_disabled": errors.skill_disabled,
    "user_not_found": errors.user_not_found,
    "not_found": errors.transaction_not_found,
    "already_refunded": errors.already_refunded,
    "hold_not_found": errors.hold_not_found,
}


def _answer(row: Any, digest: bytes | None, subject: str, from_row: Any) -> tuple[Any, bool]:
    """What a written or replayed outcome row holds (``from_row`` reads it) and whether it
    is a replay; else the row's refusal."""
    if row.outcome == "written":
        return from_row(row), False
    if row.outcome == "replay":
        same_request(row, digest)
        return from_row(row), True
    raise refused(row, subject)


def _transaction(row: Any, digest: bytes | None, subject: str) -> Written:
    return Written(*_answer(row, digest, subject, repo.transaction_from_row))


async def charge(
    db: Database,
    cache: SkillCache,
    data: ChargeIn,
    key: str | None,
    digest: bytes | None,
    *,
    api_key_id: str,
    limited: LimitedUsers | None = None,
    batches: Batches | None = None,
) -> Written:
    """Charge at the cached price (one function call on the hot-path pool); raises
    ``KeyNotLive`` when the caller's key was revoked. ``limited``: this worker's hint of
    which users have spend limits (none: every charge tries the one statement first).
    ``batches``: the worker's batches (none: each charge its own call)."""
    params = {
        "api_key_id": api_key_id,
        "skill": data.skill,
        "user_id": data.user_id,
        "units": data.units,
        "description": data.description,
        "key": key,
        "hash": digest,
        "member": data.member,
        "limited": limited is not None and data.user_id in limited,
    }
    price = Price(await cache.get(data.skill))
    try:
        row = await batches.charges.write(price.at(params)) if batches else None
        if not price.answered(row):
            async with db.statements() as conn:
                for _ in attempts():
                    row = await unless_raced(repo.charge(conn, price.at(params)))
                    if price.answered(row):
                        break
    finally:
        await price.publish(cache)
    if row.outcome == "written":
        if price.version != row.s_version:
            await cache.put(skill_from_row(row, "s_"))
        if limited is not None and row.limited != params["limited"]:
            limited.learn(data.user_id, row.limited)
        return Written(repo.transaction_from_row(row))
    if row.outcome == "key_revoked":
        raise KeyNotLive()
    subject = data.user_id if row.outcome == "user_not_found" else data.skill
    return _transaction(row, digest, subject)


async def add_credits(
    db: Database, user_id: str, data: CreditIn, key: str | None, digest: bytes | None
) -> Written:
    params = {
        "user_id": user_id,
        "type": data.type,
        "amount": data.amount,
        "description": data.description,
        "key": key,
        "hash": digest,
        "expires_at": data.expires_at,
        "priority": data.priority,
        "category": data.category,
    }
    async with db.connect() as conn:
        if expiry_passed(data):  # after the replay: a retry gets its original answer
            stored = await repo.keyed(conn, user_id, key) if key is not None else None
            if stored is None:
                raise errors.validation_error("expires_at", "must be in the future")
            same_request(stored, digest)
            return Written(repo.transaction_from_row(stored), replayed=True)
        row = await call_outcome(repo.credit(conn, params))
    return _transaction(row, digest, user_id)


async def refund(
    db: Database, tx_id: str, data: RefundIn, key: str | None, digest: bytes | None
) -> Written:
    shards = await db.shard_map()
    async with db.connect() as conn:
        original = await repo.get_transaction(conn, tx_id, shards)
        if original is None:
            raise errors.transaction_not_found(tx_id)
        params = {
            "user_id": original.user_id,
            "id": tx_id,
            "description": data.description,
            "key": key,
            "hash": digest,
        }
        row = await call_outcome(repo.refund(conn, params))
    return _transaction(row, digest, tx_id)


async def get_user(db: Database, user_id: str) -> User:
    """The user's balance, after writing off what expired; 404 if there is none."""
    async with db.connect() as conn:
        if (user := await repo.get_user(conn, user_id)) is not None:
            return user
    raise errors.user_not_found(user_id)


async def transactions(
    db: Database,
    user_id: str,
    limit: int,
    before: int | None,
    tx_type: str | None,
    member: str | None = None,
) -> tuple[list[Transaction], str | None]:
    """A page of the user's log (of one member's rows, when given), newest first, after
    writing off what expired; 404 if there is no such user."""
    async with db.connect() as conn:
        if not await repo.touch(conn, user_id):
            raise errors.user_not_found(user_id)
        return await repo.page(conn, user_id, limit, before, tx_type, member)


async def grants(
    db: Database, user_id: str, status: str, limit: int, after: str | None
) -> tuple[list[Grant], str | None]:
    """A page of the user's grants in spending order, after writing off what expired;
    404 if there is no such user."""
    async with db.connect() as conn:
        if not await repo.touch(conn, user_id):
            raise errors.user_not_found(user_id)
        if after is not None and not await repo.has_grant(conn, user_id, after):
            raise errors.validation_error("cursor", "is not a cursor of this user's grants")
        return await repo.grants_page(conn, user_id, status, limit, after)


async def get_transaction(db: Database, tx_id: str) -> Transaction:
    shards = await db.shard_map()
    async with db.connect() as conn:
        row = await repo.get_transaction(conn, tx_id, shards)
    if row is None:
        raise errors.transaction_not_found(tx_id)
    return repo.transaction_from_row(row)


async def expire_due(db: Database, batch: int = 500) -> int:
    """Write off what has expired for every user with something due (the worker's sweep):
    each user in a transaction of its own. How many users were touched."""
    async with db.connect() as conn:
        users = await repo.due_users(conn, batch)
        for user_id in users:
            await repo.touch(conn, user_id)
    return len(users)


def _hold(row: Any, digest: bytes | None, subject: str) -> HoldWritten:
    return HoldWritten(*_answer(row, digest, subject, repo.hold_from_row))


async def create_hold(
    db: Database,
    cache: SkillCache,
    data: HoldIn,
    key: str | None,
    digest: bytes | None,
    batches: Batches | None = None,
) -> HoldWritten:
    """Reserve at the cached price (see ``charge``)."""
    params = {
        "skill": data.skill,
        "user_id": data.user_id,
        "units": data.units,
        "ttl": data.ttl_seconds,
        "description": data.description,
        "key": key,
        "hash": digest,
        "member": data.member,
    }
    price = Price(await cache.get(data.skill))
    try:
        row = await batches.holds.write(price.at(params)) if batches else None
        if not price.answered(row):
            async with db.statements() as conn:  # one function call, like a charge
                for _ in attempts():
                    row = await unless_raced(repo.hold(conn, price.at(params)))
                    if price.answered(row):
                        break
    finally:
        await price.publish(cache)
    subject = data.user_id if row.outcome == "user_not_found" else data.skill
    return _hold(row, digest, subject)


async def get_hold(db: Database, hold_id: str) -> Hold:
    shards = await db.shard_map()
    async with db.connect() as conn:
        row = await repo.get_hold(conn, hold_id, shards)
    if row is None:
        raise errors.hold_not_found(hold_id)
    return repo.hold_from_row(row)


async def capture(
    db: Database,
    hold_id: str,
    data: CaptureIn,
    key: str | None,
    digest: bytes | None,
    batches: Batches | None = None,
) -> Written:
    shards = await db.shard_map()
    async with db.connect() as conn:
        current = await repo.get_hold(conn, hold_id, shards)
        if current is None:
            raise errors.hold_not_found(hold_id)
        units = data.units if data.units is not None else current.units
        if units > current.units:
            raise errors.validation_error("units", f"must be at most the {current.units} reserved")
        params = {
            "user_id": current.user_id,
            "id": hold_id,
            "units": units,
            "description": data.description,
            "key": key,
            "hash": digest,
        }
    row = await batches.captures.write(params) if batches else None
    if row is None:
        async with db.connect() as conn:
            row = await call_outcome(repo.capture(conn, params))
    return _transaction(row, digest, hold_id)


async def release(db: Database, hold_id: str) -> Hold:
    shards = await db.shard_map()
    async with db.connect() as conn:
        current = await repo.get_hold(conn, hold_id, shards)
        if current is None:
            raise errors.hold_not_found(hold_id)
        row = await repo.release(conn, current.user_id, hold_id)
    return _hold(row, None, hold_id).hold


def _check_refundable(row: Any, tx_id: str) -> None:
    """409 unless the transaction ``row`` is a CONSUMPTION not refunded yet."""
    if row.type != "CONSUMPTION":
        raise errors.not_refundable(row.type)
    if row.refunded:
        raise errors.already_refunded(tx_id)


async def refundable(db: Database, tx_id: str) -> tuple[Transaction, ApiError | None]:
    """The transaction, and the error ``refund`` would answer for it now (None: it would
    refund it)."""
    shards = await db.shard_map()
    async with db.connect() as conn:
        row = await repo.get_transaction(conn, tx_id, shards)
    if row is None:
        raise errors.transaction_not_found(tx_id)
    try:
        _check_refundable(row, tx_id)
    except ApiError as exc:
        return repo.transaction_from_row(row), exc
    return repo.transaction_from_row(row), None


@dataclass(frozen=True, slots=True)
class UserLog:
    """A user, one page of their log and their active grants, and what the log's rows
    refer to (for the admin UI)."""

    user: User
    items: list[Transaction]
    next_cursor: str | None
    refunded: set[str]  # the page's charges that have a refund
    charges: dict[str, Any]  # the charges the page's refunds refunded, by id, with ``seq``
    grants: list[Grant]  # the active grants, in spending order
    limits: list[Limit]  # the spend limits, with spent now


async def user_log(
    db: Database, user_id: str, limit: int, before: int | None, member: str | None = None
) -> UserLog:
    """``member``: one member's rows of the log only."""
    async with db.connect() as conn:
        user = await repo.get_user(conn, user_id)  # writes off what expired first
        if user is None:
            raise errors.user_not_found(user_id)
        items, next_cursor = await repo.page(conn, user_id, limit, before, None, member)
        refunded = await repo.refunded_among(conn, user_id, [t.id for t in items])
        charges = await repo.charges_among(
            conn, user_id, [t.refund_of for t in items if t.refund_of]
        )
        grants, _ = await repo.grants_page(conn, user_id, "active", 200, None)
        limits = await limits_repo.of_user(conn, user_id)
    return UserLog(user, items, next_cursor, refunded, charges, grants, limits)
