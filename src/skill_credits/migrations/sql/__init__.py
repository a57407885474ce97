"""The ledger's SQL as the migrations loaded it, frozen: ``ledger_vN.sql`` is what migration
0006 + N - 1 applied (0006 loads v1, 0007 v2, ... 0011 v6), byte for byte, never edited.

A replay of the history on an empty database runs these, in order, so that every step
meets the tables it was written for; the database's present is ``skill_credits/ledger/sql``.
"""

from __future__ import annotations

import re
from importlib import resources

from skill_credits.ledger.sql import split


def statements(name: str) -> list[str]:
    """The commands of the frozen file ``name``."""
    text = resources.files(__package__).joinpath(name).read_text(encoding="utf-8")
    return split(text, name)


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
