"""The benchmark's targets: servers on free ports, started and stopped around each phase
with the tests' own process classes (tests/support/processes.py).

skill-credits runs as deployed (`skill-credits serve`); the ceiling and the original are
plain Litestar apps under uvicorn, which answer only POST /v1/charges.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
from tests.support.processes import AppServer, HttpServer

ROOT = Path(__file__).resolve().parents[1]


class UvicornApp(HttpServer):
    """``module:create_app`` under uvicorn, as fast as uvicorn serves it (no access log)."""

    def __init__(self, module: str, env: dict[str, str], workers: int) -> None:
        super().__init__(env, cwd=ROOT, quiet=True)
        self.module, self.workers = module, workers

    def argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            f"{self.module}:create_app",
            "--factory",
            "--port",
            str(self.port),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
            "--no-access-log",
        ]

    def answers(self) -> bool:
        httpx.post(f"{self.url}/v1/charges", content=b"{}", timeout=1)  # any answer will do
        return True


@dataclass
class Target:
    """A server under load, by the name the report gives it."""

    name: str
    server: HttpServer

    def worker_pid(self) -> int:
        """The process that serves: the one worker spawned, or the server itself."""
        return (self.server.worker_pids() or [self.server.proc.pid])[0]


def skill_credits(workers: int, database_url: str, redis_url: str, prefix: str) -> Target:
    env = {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "REDIS_PREFIX": prefix}
    return Target(f"skill-credits {workers}w", AppServer(env, workers, cwd=ROOT, quiet=True))


def plain(name: str, module: str, workers: int, env: dict[str, str]) -> Target:
    return Target(f"{name} {workers}w", UvicornApp(module, env, workers))
