"""Installed from its wheel, away from the checkout, the service works; and a host app's
environment with only httpx and msgspec can use `skill_credits.host.client`.

Builds the sdist and the wheel from it (`uv build`, as a release would), installs the
wheel into fresh virtual environments (dependencies at the versions of uv.lock), and
runs everything from a folder outside the checkout, so nothing can be found through it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.processes import AppServer

SERVER_PACKAGES = ("sqlalchemy", "asyncpg", "redis", "alembic", "litestar")

# Run by the host app's Python: charge through the client, with none of the server's
# packages installed.
CLIENT_SCRIPT = """
import asyncio, importlib.util, sys
present = [n for n in sys.argv[3:] if importlib.util.find_spec(n) is not None]
assert not present, f"installed: {present}"
from skill_credits.host.client import SkillCreditsClient

async def main():
    client = SkillCreditsClient(sys.argv[1], sys.argv[2])
    tx = await client.charge("pkg_user", "PKG_SKILL", units=2, idempotency_key="pkg-1")
    await client.close()
    print(tx.type, tx.amount, tx.balance_after)

asyncio.run(main())
"""


def uv(*args: str | Path, cwd: Path = ROOT) -> str:
    found = shutil.which("uv") or f"{sys.executable} -m uv"
    done = subprocess.run(
        [*found.split(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def venv(path: Path, *install: str | Path) -> Path:
    """A fresh virtual environment at ``path`` with ``install`` in it; its bin folder."""
    uv("venv", "--quiet", "--python", sys.executable, path)
    uv("pip", "install", "--quiet", "--python", path / "bin" / "python", *install)
    return path / "bin"


@pytest.mark.slow
def test_the_wheel_runs_outside_the_checkout(
    tmp_path, fresh_database, redis_url, redis_prefix
) -> None:
    uv("build", "--quiet", "--out-dir", tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    locked = tmp_path / "locked.txt"
    uv(
        "export",
        "--quiet",
        "--frozen",
        "--no-dev",
        "--no-emit-project",
        "--no-hashes",
        "-o",
        locked,
    )
    server_bin = venv(tmp_path / "server", "-r", locked, wheel)
    # a host app: the client's own needs, then the wheel without its dependencies
    host_bin = venv(tmp_path / "host", "-c", locked, "httpx", "msgspec")
    uv("pip", "install", "--quiet", "--no-deps", "--python", host_bin / "python", wheel)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PWD")} | {
        "PATH": f"{server_bin}:/usr/local/bin:/usr/bin:/bin",
        "DATABASE_URL": fresh_database[1],
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": f"{redis_prefix}pkg:",
    }

    def cli(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [server_bin / "skill-credits", *args],
            cwd=elsewhere,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        return done

    where = subprocess.run(
        [server_bin / "python", "-c", "import skill_credits; print(skill_credits.__file__)"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
    ).stdout
    assert where.startswith(str(tmp_path / "server")), where

    assert "newest schema" in cli("migrate").stdout
    service_key = cli("keys", "create", "--role", "service", "--name", "host").stdout.split()[-1]
    server = AppServer(env, command=[str(server_bin / "skill-credits")], cwd=elsewhere)
    server.start()
    try:
        admin_key = server.output().split("It is shown once:")[1].split()[0]
        admin = {"Authorization": f"Bearer {admin_key}"}
        with httpx.Client(base_url=server.url, timeout=10) as http:
            skill = {"name": "PKG_SKILL", "display_name": "Packaged", "cost": 3}
            assert http.post("/v1/admin/skills", headers=admin, json=skill).status_code == 201
            grant = {"amount": 10, "type": "GRANT"}
            r = http.post("/v1/users/pkg_user/credits", headers=admin, json=grant)
            assert r.status_code == 201

            charged = subprocess.run(
                [
                    host_bin / "python",
                    "-c",
                    CLIENT_SCRIPT,
                    server.url,
                    service_key,
                    *SERVER_PACKAGES,
                ],
                cwd=elsewhere,
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert charged.returncode == 0, charged.stderr
            assert charged.stdout.split() == ["CONSUMPTION", "-6", "4"]

            login = http.get("/admin/login")
            assert login.status_code == 200 and 'name="api_key"' in login.text, login.text
            css = http.get("/static/admin.css")
            assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    finally:
        server.stop()
