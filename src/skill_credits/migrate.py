"""`skill-credits migrate`: create the database if it is missing, then upgrade to head.

The Alembic scripts are package data (`skill_credits/migrations`, which the top-level
`migrations/` links to), found as a package resource: a checkout and an installed
wheel use the same lookup, and `alembic.ini` names the same location.
"""

from __future__ import annotations

import asyncio

import asyncpg
from alembic import command
from alembic.config import Config

from skill_credits.settings import Settings

MIGRATIONS = "skill_credits:migrations"


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", MIGRATIONS)
    config.attributes["sqlalchemy_url"] = settings.sqlalchemy_url
    return config


async def create_database_if_missing(database_url: str) -> bool:
    """Create the database ``database_url`` names; True if it had to be created."""
    base, _, name = database_url.rpartition("/")
    name = name.split("?", 1)[0]
    if not name:
        raise ValueError("DATABASE_URL names no database")
    conn = await asyncpg.connect(f"{base}/postgres", timeout=5)
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if exists:
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        try:
            await conn.execute(f"CREATE DATABASE {quoted}")
        except asyncpg.DuplicateDatabaseError:  # created meanwhile by another process
            return False
        return True
    finally:
        await conn.close()


def migrate(settings: Settings) -> None:
    asyncio.run(create_database_if_missing(settings.dsns()[0]))
    command.upgrade(alembic_config(settings), "head")
