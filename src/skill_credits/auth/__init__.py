"""API keys: ``sck_<id>_<secret>``; only SHA-256 of the secret is stored.

The id finds the row, the secret's hash is compared in constant time. Every request
reads the key's row, so a revocation stops the key on its next request, on any worker.

One exception, for the charge hot path (routes with ``opt={"deferred_auth": True}``):
a key already seen by this worker is checked against its cached hash in constant time,
and the charge statement itself refuses to write unless the key's row is still live
(``KEY_LIVE``). So a revoked key still fails on its next request, without a second
round trip on the way to a successful charge. Every refusal or validation error on
such a route first confirms the key in PostgreSQL (``confirm``), so 401 keeps its
precedence.

The package's public names live here; the ``api_keys`` statements in ``repository.py``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from litestar.connection import ASGIConnection

from skill_credits import errors
from skill_credits.auth import repository as repo
from skill_credits.db import Connection

ROLES = ("admin", "service")
PREFIX = "sck"


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str
    key_id: str = ""
    # False while only the worker's cache vouches for the key (deferred routes).
    confirmed: bool = True

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


async def create_key(conn: Connection, name: str, role: str) -> NewKey:
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32).replace("_", "-")
    await repo.insert(conn, key_id, name, role, _hash(secret))
    return NewKey(name=name, role=role, token=f"{PREFIX}_{key_id}_{secret}")


async def revoke_key(conn: Connection, name: str) -> bool:
    return await repo.revoke(conn, name)


async def has_admin_key(conn: Connection) -> bool:
    return await repo.has_live_admin(conn)


class KeyCache:
    """Key rows this worker has verified: id -> (hash, name, role). Never trusted alone."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.rows: dict[str, tuple[bytes, str, str]] = {}

    def put(self, key_id: str, key_hash: bytes, name: str, role: str) -> None:
        if len(self.rows) >= self.limit:
            self.rows.clear()
        self.rows[key_id] = (key_hash, name, role)

    def check(self, token: str) -> Principal | None:
        parts = _split(token)
        if parts is None or (row := self.rows.get(parts[0])) is None:
            return None
        if not hmac.compare_digest(_hash(parts[1]), row[0]):
            return None
        return Principal(name=row[1], role=row[2], key_id=parts[0], confirmed=False)

    def drop(self, token: str) -> None:
        parts = _split(token)
        if parts is not None:
            self.rows.pop(parts[0], None)


async def verify_token(
    conn: Connection, token: str, cache: KeyCache | None = None
) -> Principal | None:
    parts = _split(token)
    if parts is None:
        return None
    key_id, secret = parts
    row = await repo.live(conn, key_id)
    presented = _hash(secret)
    stored = row.key_hash if row else b"\0" * len(presented)
    if hmac.compare_digest(presented, stored) and row is not None:
        if cache is not None:
            cache.put(key_id, bytes(row.key_hash), row.name, row.role)
        return Principal(name=row.name, role=row.role, key_id=key_id)
    if cache is not None:
        cache.drop(token)
    return None


async def live_admin(conn: Connection, key_id: str) -> Principal | None:
    """The admin key ``key_id`` if it is still live (an admin UI session's key), else None."""
    row = await repo.live(conn, key_id)
    if row is None or row.role != "admin":
        return None
    return Principal(name=row.name, role=row.role, key_id=key_id)


def bearer_token(connection: ASGIConnection) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


async def authenticate(connection: ASGIConnection) -> None:
    """First step of every /v1 request (``bodies.api_request``): a live key, else 401.

    It runs before the body is read, so 401 wins over 413 and 400 as the contract
    orders them; the role itself is checked in the handler, after validation. (It is
    not a Litestar guard: Litestar copies the route handler for every guard call,
    which the profile showed on the charge hot path.)
    """
    token = bearer_token(connection)
    principal = None
    keys: KeyCache = connection.app.state.key_cache
    if token is not None:
        if connection.route_handler.opt.get("deferred_auth"):
            principal = keys.check(token)
        if principal is None:
            async with connection.app.state.db.connect() as conn:
                principal = await verify_token(conn, token, keys)
    if principal is None:
        raise errors.unauthorized()
    connection.scope["auth"] = principal


async def confirm(connection: ASGIConnection) -> None:
    """Make sure a key only the cache vouched for is still live; 401 if not."""
    principal: Principal | None = connection.scope.get("auth")
    if principal is None or principal.confirmed:
        return
    token = bearer_token(connection) or ""
    async with connection.app.state.db.connect() as conn:
        live = await verify_token(conn, token, connection.app.state.key_cache)
    if live is None:
        raise errors.unauthorized()
    connection.scope["auth"] = live


def principal_of(connection: ASGIConnection) -> Principal:
    return connection.scope["auth"]


def require_admin(connection: ASGIConnection) -> Principal:
    principal = principal_of(connection)
    if not principal.is_admin:
        raise errors.forbidden("this needs an admin key")
    return principal
