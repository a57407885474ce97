"""`make run` installs what running needs and no test tools; `make test` installs them."""

from __future__ import annotations

import subprocess

from tests.support import ROOT


def planned(target: str) -> list[str]:
    """The commands ``make <target>`` would run (``make -n``), one a line."""
    done = subprocess.run(
        ["make", "-n", target], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_make_run_installs_no_test_tools() -> None:
    run = planned("run")
    syncs = [line for line in run if " sync " in line]
    assert syncs and all("--no-dev" in line for line in syncs), run
    # `uv run` would sync the default groups (dev included) by itself
    uv_runs = [line for line in run if " run " in line]
    assert uv_runs and all("--no-sync" in line for line in uv_runs), run
    assert any("skill-credits serve" in line for line in uv_runs)


def test_make_test_installs_the_test_tools() -> None:
    syncs = [line for line in planned("test") if " sync " in line]
    assert syncs and not [line for line in syncs if "--no-dev" in line]
