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
_VERSION = re.compile(r"ledger_v(\d+)\.sql")


def previous(name: str) -> list[str]:
    """The functions that ``name`` (``ledger_vN.sql``) replaces (CREATE OR REPLACE), each
    as the newest earlier file defines it, as CREATE OR REPLACE commands: what the
    downgrade of the migration that loads ``name`` runs to put them back."""
    found = _VERSION.fullmatch(name)
    if found is None:
        raise ValueError(f"{name}: not a ledger_vN.sql")
    wanted = set(_REPLACED.findall("\n".join(statements(name))))
    commands: list[str] = []
    for version in range(int(found.group(1)) - 1, 0, -1):
        here = [
            (created.group(1), command)
            for command in statements(f"ledger_v{version}.sql")
            if (created := _CREATED.search(command)) and created.group(1) in wanted
        ]
        commands += [
            re.sub(
                r"^CREATE (?:OR REPLACE )?FUNCTION",
                "CREATE OR REPLACE FUNCTION",
                command,
                count=1,
                flags=re.MULTILINE,
            )
            for _, command in here
        ]
        wanted -= {function for function, _ in here}
    if wanted:
        raise ValueError(f"{name} replaces functions no earlier file has: {sorted(wanted)}")
    return commands
