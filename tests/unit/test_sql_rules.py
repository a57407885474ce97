"""The rules of ``ledger/sql/README.md``, checked on the present SQL itself: what a
distributed database needs of every statement, so that each stays true as functions are
changed in place. A plain reading of the text, statement by statement."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from skill_credits.ledger.sql import FILES, SCHEMA, commands

MIGRATIONS = Path(__file__).resolve().parents[2] / "src" / "skill_credits" / "migrations"
USER_TABLES = (
    "users",
    "transactions",
    "grants",
    "holds",
    "limits",
    "events",
    "event_deliveries",
    "recharge_rules",
    "recharges",
)
FUNCTION = re.compile(
    r"CREATE OR REPLACE FUNCTION (\w+)\((.*?)\)\s*(?:RETURNS.*?)?LANGUAGE (\w+).*?AS \$\$(.*?)\$\$",
    re.DOTALL,
)


def functions() -> list[tuple[str, str, str, str]]:
    """(name, arguments, language, body) of every function of the present."""
    return [
        found.groups()
        for name in FILES
        if name != SCHEMA
        for command in commands(name)
        for found in FUNCTION.finditer(command)
    ]


def statements(body: str) -> list[str]:
    """The SQL statements of a body, comments dropped, one line each."""
    code = re.sub(r"--[^\n]*", "", body)
    return [" ".join(part.split()) for part in code.split(";") if part.strip()]


def touches(statement: str) -> list[str]:
    """The user tables a statement reads or writes (FROM, JOIN, UPDATE, INTO, DELETE)."""
    return re.findall(
        rf"\b(?:FROM|JOIN|UPDATE|INTO|DELETE FROM)\s+({'|'.join(USER_TABLES)})\b", statement
    )


def test_the_present_has_functions_to_check() -> None:
    assert len(functions()) > 40


def test_every_statement_on_a_users_table_names_the_user() -> None:
    """Inside functions, a statement that reads or writes a user's table says user_id;
    the few that range over every user on purpose are listed."""
    # the worker's scan, reconcile, usage's rollups over every user
    everyone = {
        "sc_due_users",
        "sc_grant_problems",
        "sc_usage_roll",
        "sc_usage_problems",
        "sc_recharge_problems",
        "sc_usage",
    }
    missing = [
        (name, statement[:90])
        for name, _, _, body in functions()
        if name not in everyone
        for statement in statements(body)
        if touches(statement) and "user_id" not in statement
    ]
    assert missing == []


def test_no_data_modifying_cte_feeds_an_insert() -> None:
    offending = [
        name
        for name, _, _, body in functions()
        for statement in statements(body)
        if re.match(r"WITH\b", statement)
        and re.search(r"\bAS \((?:UPDATE|DELETE|INSERT)\b", statement)
        and re.search(r"\)\s*INSERT INTO\b", statement)
    ]
    assert offending == []


def test_queries_on_a_users_table_are_plpgsql() -> None:
    sql_language = [
        name
        for name, _, language, body in functions()
        if language.lower() == "sql" and name != "sc_grant_problems" and touches(body)
    ]
    assert sql_language == []


def test_no_volatile_function_inside_an_update_or_delete() -> None:
    offending = [
        (name, statement[:90])
        for name, _, _, body in functions()
        for statement in statements(body)
        if (write := re.search(r"\b(UPDATE \w+( \w+)? SET|DELETE FROM)\b", statement))
        and re.search(
            r"\b(clock_timestamp|random|skill_credits_uuid_v7)\(", statement[write.start() :]
        )
    ]
    assert offending == []


def test_no_function_takes_a_users_table_row() -> None:
    """Columns, never a row of a user's table, in what queries call (the outcome builders
    take a row a PL/pgSQL variable holds)."""
    builders = {"sc_tx_out", "sc_hold_out", "sc_recharge_json"}
    offending = [
        (name, arguments)
        for name, arguments, _, _ in functions()
        if name not in builders
        and re.search(rf"\b\w+ ({'|'.join(USER_TABLES)})\b(?!\s*\[)", arguments)
    ]
    assert offending == []


@pytest.mark.parametrize(
    "path",
    [p for p in sorted((MIGRATIONS / "versions").glob("*.py")) if p.name >= "0012"],
    ids=lambda p: p.name,
)
def test_one_add_constraint_per_alter_table(path: Path) -> None:
    """From 0012 on (a distributed database takes no more in one ALTER)."""
    text = path.read_text()
    alters = re.findall(r"ALTER TABLE[^\"]*?(?=\"\s*[,\]]|\"\"\")", text, re.DOTALL)
    assert all(alter.count("ADD CONSTRAINT") <= 1 for alter in alters)
