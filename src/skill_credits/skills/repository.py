"""Every query of the skill catalogue, and the skill's shape in SQL.

``skill_columns`` and ``skill_from_row`` are the one place that maps the ``skills`` row
to ``Skill``: statements of other packages that embed a skill (the ledger's charge and
its refusal query) use them with a prefix, so a new skill field is a migration, a field
of ``Skill`` and nothing else in SQL.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from skill_credits.db import Connection
from skill_credits.skills.schemas import Skill, SkillEdit

# Columns whose SQL type is not the one Skill holds.
_CASTS = {"id": "::text"}


def skill_columns(table: str = "", prefix: str = "") -> str:
    """A SELECT list of every ``Skill`` field: ``s.id::text AS s_id, s.name AS s_name, ...``
    with ``table="s", prefix="s_"``; plain ``id::text AS id, name AS name, ...`` without."""
    qualifier = f"{table}." if table else ""
    return ", ".join(
        f"{qualifier}{f}{_CASTS.get(f, '')} AS {prefix}{f}" for f in Skill.__struct_fields__
    )


SKILL_COLUMNS = skill_columns()


def skill_from_row(row: Any, prefix: str = "") -> Skill:
    """The skill in ``row``, whose columns are ``skill_columns(..., prefix)``."""
    return Skill(**{f: getattr(row, prefix + f) for f in Skill.__struct_fields__})


async def cache_namespace(conn: Connection) -> str:
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


async def insert(conn: Connection, values: dict[str, Any]) -> Skill | None:
    """A new skill from ``values`` (column -> value), or None if its name is taken."""
    row = (
        await conn.execute(
            text(
                f"INSERT INTO skills ({', '.join(values)})"
                f" VALUES ({', '.join(f':{column}' for column in values)})"
                f" ON CONFLICT (name) DO NOTHING RETURNING {SKILL_COLUMNS}"
            ),
            values,
        )
    ).first()
    return skill_from_row(row) if row else None


async def get(conn: Connection, name: str, *, for_update: bool = False) -> Skill | None:
    lock = " FOR UPDATE" if for_update else ""
    row = (
        await conn.execute(
            text(f"SELECT {SKILL_COLUMNS} FROM skills WHERE name = :name{lock}"), {"name": name}
        )
    ).first()
    return skill_from_row(row) if row else None


async def list_all(conn: Connection) -> list[Skill]:
    rows = await conn.execute(text(f"SELECT {SKILL_COLUMNS} FROM skills ORDER BY name"))
    return [skill_from_row(r) for r in rows]


async def catalogue(conn: Connection) -> tuple[int, list[Skill]]:
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


async def update(conn: Connection, skill_id: str, values: dict[str, Any]) -> Skill:
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
    conn: Connection, skill: Skill, actor: str, changes: dict[str, list[Any]]
) -> None:
    """The edit's history row, its skill.changed event and the event's deliveries."""
    await conn.execute(
        text(
            "SELECT sc_skill_changed(CAST(:skill_id AS uuid), :version, :changed_at, :actor,"
            " CAST(:changes AS jsonb))"
        ),
        {
            "skill_id": skill.id,
            "version": skill.version,
            "changed_at": skill.updated_at,
            "actor": actor,
            "changes": json.dumps(changes),
        },
    )


async def history(conn: Connection, skill_id: str) -> list[SkillEdit]:
    rows = await conn.execute(
        text(
            "SELECT version, changed_at, actor, changes::text AS changes FROM skill_history"
            " WHERE skill_id = CAST(:skill_id AS uuid) ORDER BY version DESC"
        ),
        {"skill_id": skill_id},
    )
    return [SkillEdit(r.version, r.changed_at, r.actor, json.loads(r.changes)) for r in rows]
