"""Servers of a test's own, as child processes on free ports: `skill-credits serve` (or any
HTTP app, for the benchmarks), a redis-server, a PostgreSQL cluster.

Tests that stop, hang or restart a server use these, never the run's shared servers
(servers.py); the benchmarks start their targets with the same classes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Self

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(check, timeout: float = 15.0, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - keep polling
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s (last error: {last!r})")


class RedisServer:
    """A redis-server of the test's own, on a free port; never the machine's shared one."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is needed for this test"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._answers, timeout=10)

    def _answers(self) -> bool:
        with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")

    def pause(self) -> None:
        """Hung: the process keeps its data and its port but answers nothing."""
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class HttpServer:
    """An HTTP server as a child process on a free port, in a session of its own (stopping
    it stops every worker it spawned). ``with`` starts and stops it.

    A subclass says how to start it (``argv``) and how to tell it answers (``answers``).
    Its output goes to a log file (``output()``), or nowhere with ``quiet``.
    """

    startup_seconds = 30.0  # how long it may take to answer

    def __init__(self, env: dict[str, str], cwd: Path | None = None, quiet: bool = False) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env}
        self.cwd = cwd
        self.proc: subprocess.Popen | None = None
        self.log: IO[bytes] | None = None
        if not quiet:
            self.log = tempfile.NamedTemporaryFile(prefix="sc-serve-", suffix=".log", delete=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def answers(self) -> bool:
        return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv(),
            env=self.env,
            cwd=self.cwd,
            stdout=self.log or subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_until(self.answers, self.startup_seconds)

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            self.proc = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def output(self) -> str:
        return Path(self.log.name).read_text() if self.log else ""

    def worker_pids(self) -> list[int]:
        """The uvicorn worker processes (spawned children) of a --workers N server."""
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        return [int(p) for p in out if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


class AppServer(HttpServer):
    """`skill-credits serve` as a child process on a free port (``command`` is how the
    CLI is started: by default this checkout's, with the tests' Python)."""

    def __init__(
        self,
        env: dict[str, str],
        workers: int = 1,
        command: list[str] | None = None,
        cwd: Path | None = None,
        quiet: bool = False,
    ) -> None:
        super().__init__(env, cwd, quiet)
        self.workers = workers
        self.command = command or [sys.executable, "-m", "skill_credits.cli"]

    def argv(self) -> list[str]:
        return [*self.command, "serve", "--port", str(self.port), "--workers", str(self.workers)]


class PostgresCluster:
    """A PostgreSQL cluster of the test's own (initdb/pg_ctl in a temp dir, free port)."""

    def __init__(self) -> None:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        found = shutil.which("pg_ctl") or (str(bins[-1]) if bins else None)
        assert found, "pg_ctl/initdb are needed for this test"
        self.bin = Path(found).parent
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="sc-pg-")
        self.data = os.path.join(self.dir, "data")
        self.as_postgres = os.geteuid() == 0  # initdb refuses to run as root
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")

    @property
    def url(self) -> str:
        return f"postgresql://sc@127.0.0.1:{self.port}"

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(
            cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120
        )

    def init(self) -> None:
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "sc", "--no-sync")

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1"
            " -c fsync=off -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-o",
            opts,
            "-l",
            os.path.join(self.dir, "log"),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """``fast`` closes connections cleanly; ``immediate`` is a crash (no shutdown)."""
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "stop")

    def cleanup(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


class OwnRedis:
    """A skill cache on a Redis server of the test's own (so its command counts are the
    test's), that server, and a client of it: ``async with OwnRedis(...) as own``."""

    def __init__(self, *, timeout: float = 0.5, remember: float = 0.0) -> None:
        self.server = RedisServer()
        self.timeout, self.remember = timeout, remember

    async def __aenter__(self) -> OwnRedis:
        from redis.asyncio import Redis

        from skill_credits.skills.cache import SkillCache, create_redis

        self.server.start()
        t = self.timeout
        self.cache = SkillCache(
            create_redis(self.server.url, t), "t:", timeout=t, remember=self.remember
        )
        self.admin = Redis.from_url(self.server.url)
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.admin.aclose()
        await self.cache.close()
        self.server.cleanup()

    async def calls(self, command: str) -> int:
        """How many times this server has run ``command`` (hget, evalsha, ...)."""
        stats = await self.admin.info("commandstats")
        return stats.get(f"cmdstat_{command}", {}).get("calls", 0)


@contextlib.contextmanager
def server_with_own_redis(settings, workers: int = 1):
    """`skill-credits serve` on the run's database and a redis-server of its own."""
    redis = RedisServer()
    redis.start()
    server = AppServer(
        {
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": redis.url,
            "REDIS_PREFIX": settings.redis_prefix,
        },
        workers=workers,
    )
    try:
        server.start()
        yield server, redis
    finally:
        server.stop()
        redis.cleanup()


def batch_size_histogram(text: str, write: str) -> dict[str, float]:
    """The ``skill_credits_batch_size`` series of one write from a /metrics page, by name
    without the write label: ``..._count``, ``..._sum``, ``..._bucket{le="1.0"}``, ..."""
    label = f'write="{write}"'
    series = {}
    for line in text.splitlines():
        if line.startswith("skill_credits_batch_size_") and label in line:
            name, value = line.rsplit(" ", 1)
            for form in (f"{label},", f",{label}", "{" + label + "}"):
                name = name.replace(form, "")
            series[name] = float(value)
    return series


async def charges_sent_together(url: str, write: str = "charge") -> int:
    """How many of the server's calls of ``write`` (all workers) carried more than one."""
    async with httpx.AsyncClient(base_url=url, timeout=5) as http:
        series = batch_size_histogram((await http.get("/metrics")).text, write)
    alone = series.get('skill_credits_batch_size_bucket{le="1.0"}', 0)
    return int(series.get("skill_credits_batch_size_count", 0) - alone)
