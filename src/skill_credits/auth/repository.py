"""The ``api_keys`` table's statements: a key's row by id, insert, revoke, any live admin."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from skill_credits.db import Connection


async def insert(conn: Connection, key_id: str, name: str, role: str, key_hash: bytes) -> None:
    await conn.execute(
        text("INSERT INTO api_keys (id, name, role, key_hash) VALUES (:id, :name, :role, :hash)"),
        {"id": key_id, "name": name, "role": role, "hash": key_hash},
    )


async def revoke(conn: Connection, name: str) -> bool:
    """Revoke the live keys named ``name``; False when there was none."""
    result = await conn.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE name = :name AND revoked_at IS NULL"),
        {"name": name},
    )
    return result.rowcount > 0


async def has_live_admin(conn: Connection) -> bool:
    row = await conn.execute(
        text("SELECT 1 FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL LIMIT 1")
    )
    return row.first() is not None


async def live(conn: Connection, key_id: str) -> Any:
    """The live (not revoked) key ``key_id``: a row of name, role, key_hash, or None."""
    return (
        await conn.execute(
            text("SELECT name, role, key_hash FROM api_keys WHERE id = :id AND revoked_at IS NULL"),
            {"id": key_id},
        )
    ).first()
