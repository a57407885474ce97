"""The database as it is today, written once: the SQL files beside this module.

``tables.sql`` is the shape (tables, types, indexes, the view); every other file holds the
functions of one concern, each defined once with CREATE OR REPLACE and changed in place.
``README.md`` here says what goes where and the rules every statement keeps.

Two readers: ``build()`` makes a database from nothing (the guard test compares it with
one made by the migrations), and ``functions()`` is what ``migrations/env.py`` applies
again at the end of every upgrade that reaches head, after the last versioned step (the
idea of Flyway's repeatable migrations). What the migrations loaded in their day is frozen
beside them (``skill_credits/migrations/sql/``) and is never read from here.
"""

from __future__ import annotations

import re
from importlib import resources

# In the order a database is built from nothing: the checks before the tables that call
# them, the tables before the functions that take their rows, the triggers last.
SCHEMA = "tables.sql"
FILES = (
    "checks.sql",
    SCHEMA,
    "outcomes.sql",
    "users.sql",
    "grants.sql",
    "limits.sql",
    "charge.sql",
    "credits.sql",
    "holds.sql",
    "batches.sql",
    "events.sql",
    "recharges.sql",
    "usage.sql",
)

# Where the database has the citus extension, run after the functions (never on one server).
CITUS = "citus.sql"

# A command ends at a ';' that closes a line outside a dollar-quoted body.
_DOLLAR = re.compile(r"\$\$")


def split(script: str, name: str) -> list[str]:
    """The commands of ``script`` (the text of the file ``name``), one each: asyncpg
    prepares what it runs, and a prepared statement holds one command."""
    commands: list[str] = []
    lines: list[str] = []
    quoted = False
    for line in script.splitlines():
        code = line if quoted else line.split("--", 1)[0]
        lines.append(line)
        quoted ^= len(_DOLLAR.findall(code)) % 2 == 1
        if not quoted and code.rstrip().endswith(";"):
            commands.append("\n".join(lines).strip())
            lines = []
    if any(ln.strip() and not ln.strip().startswith("--") for ln in lines):
        raise ValueError(f"{name}: text after the last command")
    return commands


def commands(name: str) -> list[str]:
    """The commands of the present file ``name``."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return split(text, name)


def build() -> list[str]:
    """Every command of the present, in order: a database from nothing. Bodies are checked
    when they first run (as pg_dump restores them): a function of checks.sql may read a
    table that tables.sql makes after it."""
    return [
        "SET check_function_bodies = off",
        *(command for name in FILES for command in commands(name)),
    ]


def functions() -> list[str]:
    """The functions and triggers of the present (every file but the tables): what an
    upgrade applies again once it has reached head."""
    return [command for name in FILES if name != SCHEMA for command in commands(name)]
