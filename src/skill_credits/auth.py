"""API keys: ``sck_<id>_<secret>``; only SHA-256 of the secret is stored.

The id finds the row, the secret's hash is compared in constant time. Every request
reads the key's row, so a revocation stops the key on its next request, on any worker.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from skill_credits.errors import ApiError

ROLES = ("admin", "service")
PREFIX = "sck"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class NewKey:
    name: str
    role: str
    token: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _split(token: str) -> tuple[str, str] | None:
    parts = token.split("_")
    if len(parts) != 3 or parts[0] != PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


async def create_key(conn: AsyncConnection, name: str, role: str) -> NewKey:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32).replace("_", "-")
    await conn.execute(
        text("INSERT INTO api_keys (id, name, role, key_hash) VALUES (:id, :name, :role, :hash)"),
        {"id": key_id, "name": name, "role": role, "hash": _hash(secret)},
    )
    return NewKey(name=name, role=role, token=f"{PREFIX}_{key_id}_{secret}")


async def revoke_key(conn: AsyncConnection, name: str) -> bool:
    result = await conn.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE name = :name AND revoked_at IS NULL"),
        {"name": name},
    )
    return result.rowcount > 0


async def has_admin_key(conn: AsyncConnection) -> bool:
    row = await conn.execute(
        text("SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1")
    )
    return row.first() is not None


async def verify_token(conn: AsyncConnection, token: str) -> Principal | None:
    parts = _split(token)
    if parts is None:
        return None
    key_id, secret = parts
    row = (
        await conn.execute(
            text("SELECT name, role, key_hash FROM api_keys WHERE id = :id AND revoked_at IS NULL"),
            {"id": key_id},
        )
    ).first()
    presented = _hash(secret)
    stored = row.key_hash if row else b"\0" * len(presented)
    if hmac.compare_digest(presented, stored) and row is not None:
        return Principal(name=row.name, role=row.role)
    return None


def bearer_token(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticated(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard of every /v1 route: a live key of any role, else 401.

    Guards run before the body is read, so 401 wins over 413 and 400 as the contract
    orders them; the role itself is checked in the handler, after validation.
    """
    token = bearer_token(connection)
    principal = None
    if token is not None:
        async with connection.app.state.db.autocommit.connect() as conn:
            principal = await verify_token(conn, token)
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid API key is required (Authorization: Bearer <key>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    connection.scope["auth"] = principal


def principal_of(connection: ASGIConnection) -> Principal:
    return connection.scope["auth"]


def require_admin(connection: ASGIConnection) -> Principal:
    principal = principal_of(connection)
    if not principal.is_admin:
        raise ApiError(403, "forbidden", "this needs an admin key")
    return principal
