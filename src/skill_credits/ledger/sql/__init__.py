"""The ledger's SQL that lives in the database: functions loaded by migrations.

Hot ledger SQL stays SQL (one file per version, CREATE OR REPLACE in the next one), so a
migration loads a file, and the file is what runs: there is no second copy in Python.
"""

from __future__ import annotations

import re
from importlib import resources

# A command ends at a ';' that closes a line outside a dollar-quoted body.
_DOLLAR = re.compile(r"\$\$")


def statements(name: str) -> list[str]:
    """The commands of ``name`` (a file next to this module), one each: asyncpg prepares
    what it runs, and a prepared statement holds one command."""
    script = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
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
    if "\n".join(lines).strip(" \n;").strip() and any(
        not ln.strip().startswith("--") and ln.strip() for ln in lines
    ):
        raise ValueError(f"{name}: text after the last command")
    return commands


_REPLACED = re.compile(r"^CREATE OR REPLACE FUNCTION (\w+)\(", re.MULTILINE)
_CREATED = re.compile(r"^CREATE (?:OR REPLACE )?FUNCTION (\w+)\(", re.MULTILINE)


def functions(name: str, *, replaced_by: str) -> list[str]:
    """The functions of ``name`` that ``replaced_by`` replaces (CREATE OR REPLACE), as
    CREATE OR REPLACE commands: what a downgrade runs to put the older version back.
    (A function ``name`` itself replaced comes back as ``name`` has it.)"""
    replaced = set(_REPLACED.findall("\n".join(statements(replaced_by))))
    return [
        re.sub(r"^CREATE (?:OR REPLACE )?FUNCTION", "CREATE OR REPLACE FUNCTION", command,
               count=1, flags=re.MULTILINE)
        for command in statements(name)
        if (found := _CREATED.search(command)) and found.group(1) in replaced
    ]
