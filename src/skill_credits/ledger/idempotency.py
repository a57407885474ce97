"""Idempotency-Key: what makes two requests the same (``request_hash``), the check a
replayed row passes before it answers (``same_request``), and the race two requests with
one key can run (``unless_raced``)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable
from typing import Any

import msgspec
from sqlalchemy import exc as sa_exc

from skill_credits import errors
from skill_credits.db.failures import unique_violation


def request_hash(
    method: str, path: str, body: msgspec.Struct | None, key: str | None
) -> bytes | None:
    """What makes two requests "the same" for an Idempotency-Key: route, path, decoded body.

    None without a key: only a keyed request is ever compared with another, so a keyless
    one neither computes nor stores it."""
    if key is None:
        return None
    return hashlib.sha256(f"{method} {path}\n".encode() + _encoded(body)).digest()


# ChargeIn's and HoldIn's last field, as the encoding ends when it is absent
_NO_MEMBER = b',"member":null}'


def _encoded(body: msgspec.Struct | None) -> bytes:
    """The body as its hash sees it. A charge or hold without a member (their last field)
    is encoded as it was before members existed, so a retry across that upgrade still
    finds its original; the hot path only cuts the bytes (tests/unit/test_pure.py pins
    the old encoding)."""
    if body is None:
        return b""
    encoded = msgspec.json.encode(body)
    if encoded.endswith(_NO_MEMBER):
        return encoded[: -len(_NO_MEMBER)] + b"}"
    return encoded


def same_request(stored: Any, digest: bytes | None) -> None:
    """A replayed row answers this request only if it was made by the same one: else 422."""
    if bytes(stored.request_hash) != digest:
        raise errors.idempotency_key_reused()


async def unless_raced(statement: Awaitable[Any]) -> Any:
    """The outcome row of a priced write, or None when it lost the race to a concurrent
    request with its Idempotency-Key: it wrote nothing (the unique index stopped it), and
    run again it answers the winner's row as the replay."""
    try:
        return await statement
    except sa_exc.IntegrityError as exc:
        if not unique_violation(exc, "transactions_idempotency"):
            raise
        return None
