"""Every query of the skill catalogue."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from skill_credits.skills.schemas import Skill, SkillEdit

SKILL_COLUMNS = (
    "id::text AS id, name, display_name, description, cost, is_active, version,"
    " created_at, updated_at"
)


def skill_from_row(row: Any) -> Skill:
    return Skill(
        id=row.id,
        name=row.name,
        display_name=row.display_name,
        description=row.description,
        cost=row.cost,
        is_active=row.is_active,
        version=row.version,
        created_at=row.created_at,
        updated_at=row.updated_at,
    )


async def cache_namespace(conn: AsyncConnection) -> str:
    """What binds the Redis cache to this database: its identity row and its OID."""
    row = (
        await conn.execute(
            text(
                "SELECT id::text AS id, (SELECT oid FROM pg_database"
                "  WHERE datname = current_database()) AS oid FROM database_identity"
            )
        )
    ).one()
    return f"{row.id}.{row.oid}"


async def insert(conn: AsyncConnection, values: dict[str, Any]) -> Skill:
    row = (
        await conn.execute(
            text(
                "INSERT INTO skills (name, display_name, description, cost, is_active)"
                " VALUES (:name, :display_name, :description, :cost, :is_active)"
                f" ON CONFLICT (name) DO NOTHING RETURNING {SKILL_COLUMNS}"
            ),
            values,
        )
    ).first()
    return skill_from_row(row) if row else None


async def get(conn: AsyncConnection, name: str, *, for_update: bool = False) -> Skill | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (
        await conn.execute(
            text(f"SELECT {SKILL_COLUMNS} FROM skills WHERE name = :name{lock}"), {"name": name}
        )
    ).first()
    return skill_from_row(row) if row else None


async def list_all(conn: AsyncConnection) -> list[Skill]:
    rows = await conn.execute(text(f"SELECT {SKILL_COLUMNS} FROM skills ORDER BY name"))
    return [skill_from_row(r) for r in rows]


async def catalogue(conn: AsyncConnection) -> tuple[int, list[Skill]]:
    """Active skills plus a stamp that grows with every create and edit (sum of versions)."""
    rows = (
        await conn.execute(
            text(
                f"SELECT {SKILL_COLUMNS}, (SELECT coalesce(sum(version), 0) FROM skills) AS stamp"
                " FROM skills WHERE is_active ORDER BY name"
            )
        )
    ).all()
    if rows:
        return rows[0].stamp, [skill_from_row(r) for r in rows]
    stamp = (await conn.execute(text("SELECT coalesce(sum(version), 0) FROM skills"))).scalar()
    return stamp, []


async def update(conn: AsyncConnection, skill_id: str, values: dict[str, Any]) -> Skill:
    assignments = ", ".join(f"{column} = :{column}" for column in values)
    row = (
        await conn.execute(
            text(
                f"UPDATE skills SET {assignments}, version = version + 1, updated_at = now()"
                f" WHERE id = CAST(:skill_id AS uuid) RETURNING {SKILL_COLUMNS}"
            ),
            {**values, "skill_id": skill_id},
        )
    ).one()
    return skill_from_row(row)


async def insert_history(
    conn: AsyncConnection, skill: Skill, actor: str, changes: dict[str, list[Any]]
) -> None:
    await conn.execute(
        text(
            "INSERT INTO skill_history (skill_id, version, changed_at, actor, changes)"
            " VALUES (CAST(:skill_id AS uuid), :version, :changed_at, :actor,"
            "         CAST(:changes AS jsonb))"
        ),
        {
            "skill_id": skill.id,
            "version": skill.version,
            "changed_at": skill.updated_at,
            "actor": actor,
            "changes": json.dumps(changes),
        },
    )


async def history(conn: AsyncConnection, skill_id: str) -> list[SkillEdit]:
    rows = await conn.execute(
        text(
            "SELECT version, changed_at, actor, changes::text AS changes FROM skill_history"
            " WHERE skill_id = CAST(:skill_id AS uuid) ORDER BY version DESC"
        ),
        {"skill_id": skill_id},
    )
    return [SkillEdit(r.version, r.changed_at, r.actor, json.loads(r.changes)) for r in rows]
