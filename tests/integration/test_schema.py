"""The guard: the database that the whole migration history builds and the one that the
present SQL files build (``ledger/sql``) are the same schema - tables, columns in order,
constraints, indexes, functions with their bodies, triggers, views, types. Nobody can
edit one and forget the other."""

from __future__ import annotations

import asyncio
import re

import asyncpg
import pytest

from skill_credits.ledger.sql import FILES, build, commands, functions
from skill_credits.migrate import create_database_if_missing, migrate
from skill_credits.settings import Settings
from tests.support.databases import drop_databases
from tests.support.run import run_in_thread
from tests.support.schema import differences, schema


@pytest.fixture(scope="module")
def two_databases(pg_base: str, run_id: str):
    """One database upgraded through every migration, one built from the present."""
    history = f"{pg_base}/sc_test_{run_id}_history"
    present = f"{pg_base}/sc_test_{run_id}_present"
    run_in_thread(migrate, Settings(database_url=history))

    async def build_present() -> None:
        await create_database_if_missing(present)
        conn = await asyncpg.connect(present)
        try:
            async with conn.transaction():
                for command in build():
                    await conn.execute(command)
        finally:
            await conn.close()

    run_in_thread(asyncio.run, build_present())
    yield history, present
    names = [url.rpartition("/")[2] for url in (history, present)]
    run_in_thread(asyncio.run, drop_databases(pg_base, *names))


def test_the_history_and_the_present_build_the_same_schema(two_databases) -> None:
    history, present = two_databases
    mine, theirs = (run_in_thread(asyncio.run, schema(url)) for url in two_databases)
    assert len(mine) > 300  # the queries see the schema at all
    assert differences(mine, theirs) == []


def test_the_guard_sees_a_changed_body_and_a_missing_index(two_databases) -> None:
    """The comparison is not blind: a body changed in place and an index gone are named."""
    history, _ = two_databases
    before = run_in_thread(asyncio.run, schema(history))
    changed = dict(before)
    key = next(k for k in before if k.startswith("function function sc_fold("))
    changed[key] = before[key].replace("head_taken = 0", "head_taken = 1")
    del changed["index index users_next_due"]
    found = differences(before, changed)
    assert [line.split(":")[0] for line in found] == [
        "function function sc_fold(p_user text, p_clear boolean)",
        "index index users_next_due",
    ]


def test_each_function_is_defined_once_in_the_present() -> None:
    """One definition per function and argument list across the present files, and every
    function the database has comes from one of them."""
    defined = [
        (name, " ".join(args.split()))
        for command in functions()
        for name, args in _DEFINED.findall(command)
    ]
    assert len(defined) > 40
    assert len(defined) == len(set(defined))
    assert "tables.sql" in FILES and not _DEFINED.findall("\n".join(commands("tables.sql")))


_DEFINED = re.compile(r"^CREATE OR REPLACE FUNCTION (\w+)\(([^)]*)\)", re.MULTILINE)


def test_the_charges_first_statement_returns_every_column_of_skills(two_databases) -> None:
    """The charge's UPDATE hands the skill back column by column (a PL/pgSQL INTO takes no
    row among other targets): a column added to skills must be added there too, or the
    skill a written charge carries (and the cache keeps) would miss it."""
    _, present = two_databases

    async def columns() -> list[str]:
        conn = await asyncpg.connect(present)
        try:
            rows = await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = 'skills'::regclass"
                " AND attnum > 0 AND NOT attisdropped ORDER BY attnum"
            )
            return [r["attname"] for r in rows]
        finally:
            await conn.close()

    (charge,) = [c for c in commands("charge.sql") if "FUNCTION sc_charge(" in c]
    (returned,) = re.findall(
        r"RETURNING u\.credits, u\.head_grant, u\.log_seq,(.*?)\n\s*INTO", charge, re.DOTALL
    )
    (into,) = re.findall(r"INTO v_credits, v_head, v_seq,(.*?);", charge, re.DOTALL)
    expected = run_in_thread(asyncio.run, columns())
    assert re.findall(r"\bc\.(\w+)", returned) == expected
    assert re.findall(r"\bs\.(\w+)", into) == expected
