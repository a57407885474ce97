"""Alembic environment: async engine over asyncpg, URL from the caller or DATABASE_URL.

The steps run in one transaction (a step that builds an index CONCURRENTLY commits what
came before it), and an upgrade that ends at head applies the present functions again
(``ledger/sql``) in that same transaction, after the last versioned step: the repeatable
step. The new tables and the functions written for them commit together; a change that
touches only functions needs no migration; and a replay of the history never meets a
function written for tables that a later step makes.

Where the database has the ``citus`` extension, the same transaction ends with
``ledger/sql/citus.sql``: the tables distributed or copied to every node and the functions
delegated, as that file says (it does nothing that is done already). For the session (a
step may commit): DDL reaches the workers over one connection per node
(``multi_shard_modify_mode``: foreign keys to reference tables require it in a
transaction), and the triggers of distributed tables fire on the node that holds the row
(``enable_unsafe_triggers``: every trigger here writes only rows of the same user).
"""

import asyncio

from alembic import context
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from skill_credits.ledger.sql import CITUS, commands, functions
from skill_credits.settings import Settings

config = context.config


def _url() -> str:
    return config.attributes.get("sqlalchemy_url") or Settings.from_env().sqlalchemy_url


def _run(connection) -> None:
    context.configure(connection=connection, target_metadata=None)
    with context.begin_transaction():
        citus = _has_citus(connection)
        if citus:
            connection.execute(text("SET citus.multi_shard_modify_mode = sequential"))
            connection.execute(text("SET citus.enable_unsafe_triggers = on"))
        context.run_migrations()
        if context.get_context().get_current_revision() == context.get_head_revision():
            _apply_present(connection)
            if citus:
                for command in commands(CITUS):
                    connection.exec_driver_sql(command)


def _has_citus(connection) -> bool:
    found = connection.execute(text("SELECT 1 FROM pg_extension WHERE extname = 'citus'"))
    return found.first() is not None


def _apply_present(connection) -> None:
    """The functions as ``ledger/sql`` writes them today, each CREATE OR REPLACE (a body
    is checked when it first runs, as pg_dump restores them)."""
    connection.execute(text("SET LOCAL check_function_bodies = off"))
    for command in functions():
        connection.exec_driver_sql(command)


async def _run_online() -> None:
    engine = create_async_engine(_url())
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_online())
