"""Money moves here. Each write is one statement in autocommit (its own transaction).

When a statement writes nothing, the failure path reads what it needs to answer
precisely (replay, 404, 403, 402) and, when the answer is "something changed under
us" (a new skill version, a concurrent hold), runs the statement again.

A charge and a hold are priced: they run at the skill version the cache knows. The
cache is read before a connection is taken and told of a newer version only after the
connection is given back, so no connection waits on Redis. The statement is the judge:
it writes only at the version it was given, and ``explain_refusal`` reads the answer off
the one row ``repo.refusal_of_*`` returns.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import msgspec
from sqlalchemy import exc as sa_exc

from skill_credits import errors
from skill_credits.db import Connection, Database, constraint_name, sqlstate
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
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.repository import skill_from_row
from skill_credits.skills.schemas import Skill

MAX_ATTEMPTS = 5
IDEMPOTENCY_CONSTRAINTS = {"transactions_idempotency"}
HOLD_IDEMPOTENCY_CONSTRAINTS = {"holds_idempotency"}
REFUND_CONSTRAINTS = IDEMPOTENCY_CONSTRAINTS | {"transactions_refund_once"}


@dataclass(frozen=True, slots=True)
class Written:
    transaction: Transaction
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


def _same_request(stored: Any, digest: bytes | None) -> bool:
    """True if ``stored`` (the row kept under an Idempotency-Key) answers this request;
    False if there is none; 422 if the key was used for another request."""
    if stored is None:
        return False
    if bytes(stored.request_hash) != digest:
        raise errors.idempotency_key_reused()
    return True


async def _replay(conn: Connection, user_id: str, key: str | None, digest: bytes | None):
    """The stored transaction for ``key``, 422 if it was used for another request, else None."""
    stored = await repo.by_idempotency_key(conn, user_id, key) if key is not None else None
    if not _same_request(stored, digest):
        return None
    return Written(repo.transaction_from_row(stored), replayed=True)


async def _write(statement: Awaitable[Any], unique: set[str]) -> Any:
    """The row a guarded write returns, or None when it wrote nothing: its guard refused,
    or a concurrent request took one of the ``unique`` keys first (then it is answered as
    that request was). A balance past 64 bits is a 400."""
    try:
        return await statement
    except sa_exc.IntegrityError as exc:
        if sqlstate(exc) == "23505" and constraint_name(exc) in unique:
            return None
        raise
    except sa_exc.DBAPIError as exc:
        if sqlstate(exc) == "22003":
            raise errors.validation_error(
                "amount", "the balance would pass the 64-bit range"
            ) from None
        raise


def explain_refusal(facts: Any, data: ChargeIn | HoldIn, version: int | None) -> Skill | None:
    """Why a priced write wrote nothing, from its facts row, in the contract's order (the
    caller has answered a revoked key and a replay first): skill 404; then, when the
    price moved since the cache's version, the skill at its current version (run again
    at it); 403; user 404; 402. None: a hold changed meanwhile (run again)."""
    if facts.s_id is None:
        raise errors.skill_not_found(data.skill)
    if version is not None and facts.s_version != version:
        return skill_from_row(facts, "s_")
    if not facts.s_is_active:
        raise errors.skill_disabled(data.skill)
    if facts.u_credits is None:
        raise errors.user_not_found(data.user_id)
    required = facts.s_cost * data.units
    available = facts.u_credits - facts.u_reserved
    if available < required:
        raise errors.insufficient_credits(facts.u_credits, available, required)
    return None


class _Price:
    """The skill version a priced write runs at: the cache's, then PostgreSQL's if the
    statement found the cache behind. ``publish`` tells the cache of the newer one (call
    it once the connection is back)."""

    __slots__ = ("skill", "newer")

    def __init__(self, cached: Skill | None) -> None:
        self.skill = cached
        self.newer: Skill | None = None

    @property
    def version(self) -> int | None:
        return self.skill.version if self.skill is not None else None

    def moved(self, current: Skill | None) -> None:
        if current is not None:
            self.skill = self.newer = current

    async def publish(self, cache: SkillCache) -> None:
        if self.newer is not None:
            await cache.put(self.newer)


async def charge(
    db: Database,
    cache: SkillCache,
    data: ChargeIn,
    key: str | None,
    digest: bytes | None,
    *,
    api_key_id: str,
) -> Written:
    """Charge at the cached price (one statement on the hot-path pool); raises
    ``KeyNotLive`` when the caller's key was revoked."""
    params = {
        "api_key_id": api_key_id,
        "skill": data.skill,
        "user_id": data.user_id,
        "units": data.units,
        "description": data.description,
        "key": key,
        "hash": digest,
        "version": None,
    }
    price = _Price(await cache.get(data.skill))
    try:
        async with db.statements() as conn:
            for _ in range(MAX_ATTEMPTS):
                params["version"] = price.version
                row = await _write(repo.charge(conn, params), IDEMPOTENCY_CONSTRAINTS)
                if row is not None:
                    break
                facts = await repo.refusal_of_charge(conn, params)
                if facts.key_live is not True:
                    raise KeyNotLive()
                if facts.key_used and (done := await _replay(conn, data.user_id, key, digest)):
                    return done
                price.moved(explain_refusal(facts, data, price.version))
            else:
                raise errors.contention()
    finally:
        await price.publish(cache)
    if price.version != row.s_version:
        await cache.put(skill_from_row(row, "s_"))
    return Written(repo.transaction_from_row(row))


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
    }
    async with db.connect() as conn:
        for _ in range(MAX_ATTEMPTS):
            row = await _write(repo.credit(conn, params), IDEMPOTENCY_CONSTRAINTS)
            if row is not None:
                return Written(repo.transaction_from_row(row))
            if done := await _replay(conn, user_id, key, digest):
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
    db: Database, tx_id: str, data: RefundIn, key: str | None, digest: bytes | None
) -> Written:
    params = {"id": tx_id, "description": data.description, "key": key, "hash": digest}
    async with db.connect() as conn:
        for _ in range(MAX_ATTEMPTS):
            row = await _write(repo.refund(conn, params), REFUND_CONSTRAINTS)
            if row is not None:
                return Written(repo.transaction_from_row(row))
            original = await repo.get_transaction(conn, tx_id)
            if original is None:
                raise errors.transaction_not_found(tx_id)
            if done := await _replay(conn, original.user_id, key, digest):
                return done
            _check_refundable(original, tx_id)
    raise errors.contention()


def _check_refundable(row: Any, tx_id: str) -> None:
    """409 unless the transaction ``row`` is a CONSUMPTION not refunded yet."""
    if row.type != "CONSUMPTION":
        raise errors.not_refundable(row.type)
    if row.refunded:
        raise errors.already_refunded(tx_id)


async def get_user(db: Database, user_id: str) -> User:
    """The user's balance; 404 if there is none."""
    async with db.connect() as conn:
        user = await repo.get_user(conn, user_id)
    if user is None:
        raise errors.user_not_found(user_id)
    return user


async def transactions(
    db: Database, user_id: str, limit: int, before: int | None, tx_type: str | None
) -> tuple[list[Transaction], str | None]:
    """A page of the user's log, newest first; 404 if there is no such user."""
    async with db.connect() as conn:
        if await repo.get_user(conn, user_id) is None:
            raise errors.user_not_found(user_id)
        return await repo.page(conn, user_id, limit, before, tx_type)


async def get_transaction(db: Database, tx_id: str) -> Transaction:
    async with db.connect() as conn:
        row = await repo.get_transaction(conn, tx_id)
    if row is None:
        raise errors.transaction_not_found(tx_id)
    return repo.transaction_from_row(row)


@dataclass(frozen=True, slots=True)
class HoldWritten:
    hold: Hold
    replayed: bool = False


async def _replay_hold(conn: Connection, user_id: str, key: str | None, digest: bytes | None):
    """The stored hold for ``key``, 422 if it was used for another request, else None."""
    stored = await repo.hold_by_idempotency_key(conn, user_id, key) if key is not None else None
    if not _same_request(stored, digest):
        return None
    return HoldWritten(repo.hold_from_row(stored), replayed=True)


async def create_hold(
    db: Database, cache: SkillCache, data: HoldIn, key: str | None, digest: bytes | None
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
    }
    price = _Price(await cache.get(data.skill))
    try:
        async with db.connect() as conn:
            for _ in range(MAX_ATTEMPTS):
                params["version"] = price.version
                row = await _write(repo.hold(conn, params), HOLD_IDEMPOTENCY_CONSTRAINTS)
                if row is not None:
                    return HoldWritten(repo.hold_from_row(row))
                facts = await repo.refusal_of_hold(conn, params)
                if facts.key_used and (done := await _replay_hold(conn, data.user_id, key, digest)):
                    return done
                price.moved(explain_refusal(facts, data, price.version))
    finally:
        await price.publish(cache)
    raise errors.contention()


async def get_hold(db: Database, hold_id: str) -> Hold:
    async with db.connect() as conn:
        row = await repo.get_hold(conn, hold_id)
    if row is None:
        raise errors.hold_not_found(hold_id)
    return repo.hold_from_row(row)


async def capture(
    db: Database, hold_id: str, data: CaptureIn, key: str | None, digest: bytes | None
) -> Written:
    async with db.connect() as conn:
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
        row = await _write(repo.capture(conn, params), IDEMPOTENCY_CONSTRAINTS)
        if row is not None:
            return Written(repo.transaction_from_row(row))
        if done := await _replay(conn, current.user_id, key, digest):
            return done
        latest = await repo.get_hold(conn, hold_id)
    raise errors.hold_not_active(latest.status)


async def release(db: Database, hold_id: str) -> Hold:
    async with db.connect() as conn:
        row = await repo.release(conn, hold_id)
        if row is not None:
            return repo.hold_from_row(row)
        current = await repo.get_hold(conn, hold_id)
    if current is None:
        raise errors.hold_not_found(hold_id)
    raise errors.hold_not_active(current.status)


async def refundable(db: Database, tx_id: str) -> tuple[Transaction, ApiError | None]:
    """The transaction, and the error ``refund`` would answer for it now (None: it would
    refund it)."""
    async with db.connect() as conn:
        row = await repo.get_transaction(conn, tx_id)
    if row is None:
        raise errors.transaction_not_found(tx_id)
    try:
        _check_refundable(row, tx_id)
    except ApiError as exc:
        return repo.transaction_from_row(row), exc
    return repo.transaction_from_row(row), None


@dataclass(frozen=True, slots=True)
class UserLog:
    """A user, one page of their log, and what its rows refer to (for the admin UI)."""

    user: User
    items: list[Transaction]
    next_cursor: str | None
    refunded: set[str]  # the page's charges that have a refund
    charges: dict[str, Any]  # the charges the page's refunds refunded, by id, with ``seq``


async def user_log(db: Database, user_id: str, limit: int, before: int | None) -> UserLog:
    async with db.connect() as conn:
        user = await repo.get_user(conn, user_id)
        if user is None:
            raise errors.user_not_found(user_id)
        items, next_cursor = await repo.page(conn, user_id, limit, before, None)
        refunded = await repo.refunded_among(conn, [t.id for t in items])
        charges = await repo.charges_among(conn, [t.refund_of for t in items if t.refund_of])
    return UserLog(user, items, next_cursor, refunded, charges)
