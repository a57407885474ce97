"""`skill_credits.host.client` imports in a host app that has only httpx and msgspec.

Fast check in a subprocess that refuses the server's packages; tests/integration/
test_package.py does the same in a real virtual environment without them.
"""

from __future__ import annotations

import subprocess
import sys

REFUSING = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"sqlalchemy", "asyncpg", "redis", "alembic", "litestar"}:
            raise ModuleNotFoundError(f"No module named {name!r}")

sys.meta_path.insert(0, NotInstalled())
from skill_credits.host.client import BillingError, SkillCreditsClient
"""


def test_the_client_imports_without_the_servers_packages() -> None:
    done = subprocess.run([sys.executable, "-c", REFUSING], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
