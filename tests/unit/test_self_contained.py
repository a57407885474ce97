"""The repository stands alone: a person who cloned it has nothing beside it, so no
file may link to or name a file outside it, and every relative link must resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import ROOT

# spelled in pieces so that this file does not name them itself
OUTSIDE = [
    re.escape("../" + "shared"),
    "shared/" + "API",
    "ORIGINAL_" + "GUIDE",
    "original " + "guide",
]
LINK = re.compile(r"\]\(([^)\s]+)\)|<img [^>]*src=\"([^\"]+)\"")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    files = []
    for name in listed:
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:4096]:
            files.append(path)
    return files


def test_no_file_names_anything_outside_the_repository() -> None:
    found = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        for pattern in OUTSIDE:
            for m in re.finditer(pattern, text, re.IGNORECASE):
                line = text.count("\n", 0, m.start()) + 1
                found.append(f"{path.relative_to(ROOT)}:{line}: {m.group(0)}")
    assert not found, found


def test_every_relative_link_resolves_inside_the_repository() -> None:
    bad = []
    for path in tracked_text_files():
        if path.suffix != ".md":
            continue
        for m in LINK.finditer(path.read_text()):
            target = (m.group(1) or m.group(2)).split("#", 1)[0]
            if not target or re.match(r"[a-z]+:", target):  # an anchor, or a web address
                continue
            resolved = (path.parent / target).resolve()
            if not resolved.is_relative_to(ROOT) or not resolved.exists():
                bad.append(f"{path.relative_to(ROOT)}: {target}")
    assert not bad, bad
