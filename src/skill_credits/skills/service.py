"""Skill catalogue logic. Functions take the ``Database`` and open the connection they
need: an edit is one transaction (the skill and its history row), a read is autocommit."""

from __future__ import annotations

from typing import Any

from skill_credits import errors
from skill_credits.db import Connection, Database
from skill_credits.skills import repository as repo
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.schemas import EDITABLE, Skill, SkillCreate, SkillEdit, SkillPatch


async def create(db: Database, data: SkillCreate, actor: str) -> Skill:
    values = {f: getattr(data, f) for f in SkillCreate.__struct_fields__}
    async with db.transaction() as conn:
        skill = await repo.insert(conn, values)
        if skill is None:
            raise errors.skill_exists(data.name)
        await repo.insert_history(conn, skill, actor, {f: [None, values[f]] for f in EDITABLE})
    return skill


async def list_all(db: Database) -> list[Skill]:
    async with db.connect() as conn:
        return await repo.list_all(conn)


async def get(db: Database, name: str) -> Skill:
    """The skill named ``name``; 404 if there is none."""
    async with db.connect() as conn:
        if (skill := await repo.get(conn, name)) is not None:
            return skill
    raise errors.skill_not_found(name)


async def history(db: Database, name: str) -> tuple[Skill, list[SkillEdit]]:
    """The skill named ``name`` and every edit of it, newest first; 404 if there is none."""
    async with db.connect() as conn:
        skill = await repo.get(conn, name)
        if skill is None:
            raise errors.skill_not_found(name)
        return skill, await repo.history(conn, skill.id)


def parse_if_match(header: str | None) -> str | None:
    if header is None:
        return None
    value = header.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"')


async def update(
    db: Database, name: str, data: SkillPatch, actor: str, if_match: str | None
) -> tuple[Skill, dict[str, list[Any]]]:
    """Apply ``data`` under a row lock, in one transaction; values equal to the current
    ones change nothing.

    Returns the skill and what changed (``{field: [old, new]}``, as its history holds it).
    """
    async with db.transaction() as conn:
        return await _update(conn, name, data, actor, if_match)


async def _update(
    conn: Connection, name: str, data: SkillPatch, actor: str, if_match: str | None
) -> tuple[Skill, dict[str, list[Any]]]:
    skill = await repo.get(conn, name, for_update=True)
    if skill is None:
        raise errors.skill_not_found(name)
    expected = parse_if_match(if_match)
    if expected is not None and expected != "*" and expected != str(skill.version):
        raise errors.version_conflict(name, skill.version, expected)
    changes: dict[str, list[Any]] = {}
    for field, new in data.given().items():
        old = getattr(skill, field)
        if old != new:
            changes[field] = [old, new]
    if not changes:
        return skill, changes
    updated = await repo.update(conn, skill.id, {f: new for f, (_, new) in changes.items()})
    await repo.insert_history(conn, updated, actor, changes)
    return updated, changes


async def publish(db: Database, cache: SkillCache, skill: Skill) -> None:
    """After a commit: the new version into the cache, and the catalogue rebuilt.

    The edit has committed whatever happens here; a failure only leaves the cache to
    be repaired (and the charge statement never trusts it for the price).
    """
    await cache.put(skill)
    try:
        await refresh_catalogue(db, cache)
    except Exception:  # noqa: BLE001 - the database blinked after the commit
        cache.needs_repair = True


async def refresh_catalogue(db: Database, cache: SkillCache) -> list[Skill]:
    async with db.connect() as conn:
        stamp, skills = await repo.catalogue(conn)
    await cache.put_catalogue(stamp, skills)
    return skills


async def active_catalogue(db: Database, cache: SkillCache) -> list[Skill]:
    cached = await cache.get_catalogue()
    if cached is not None:
        return cached
    return await refresh_catalogue(db, cache)


async def cache_prefix(db: Database, prefix: str) -> str:
    """``prefix`` (REDIS_PREFIX) bound to this database: what its cache keys start with
    (see migration 0005)."""
    async with db.connect() as conn:
        return f"{prefix}{await repo.cache_namespace(conn)}:"


async def bind_cache(db: Database, cache: SkillCache, prefix: str) -> None:
    """Point ``cache`` at this database's own keys; until then it answers every read
    with a miss and leaves writes to the repair."""
    cache.bind(await cache_prefix(db, prefix))


async def republish_all(db: Database, cache: SkillCache) -> None:
    """Repair after Redis was unreachable: every skill and the catalogue from PostgreSQL.

    The compare-and-set keeps this from ever replacing a newer entry.
    """
    cache.needs_repair = False
    async with db.connect() as conn:
        skills = await repo.list_all(conn)
    for skill in skills:
        await cache.put(skill)
    await refresh_catalogue(db, cache)
