"""`make bench`: charge throughput and latency of skill-credits, the ceiling and the original.

Everything runs on this machine against the local PostgreSQL and Redis, in databases
and a Redis key prefix of its own (dropped at the end). Load comes from `wrk`
(Debian's package) with bench/charge.lua. Results: BENCHMARKS.md, docs/bench-*.png
and bench/results/latest.json.

    uv run --group bench python bench/run.py [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import datetime as dt
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from skill_credits.auth import create_key  # noqa: E402
from skill_credits.db import Database  # noqa: E402
from skill_credits.ledger.repository import reconcile  # noqa: E402
from skill_credits.migrate import migrate  # noqa: E402
from skill_credits.settings import Settings  # noqa: E402

PG = os.environ.get("BENCH_PG", "postgresql://127.0.0.1:5432")
REDIS_URL = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6379/0")
USERS = 10_000
BIG = 10**15
SKILL = "BENCH_SKILL"
LEVELS = (0, 1_000_000, 10_000_000)
CONCURRENCY = (1, 8, 32, 128)
RATIO_ROUNDS = 3
RESULTS = ROOT / "bench" / "results"


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- databases ---------------------------------------------------------------------


async def sql(db: str, *statements: str) -> None:
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def fetchval(db: str, query: str):
    conn = await asyncpg.connect(f"{PG}/{db}")
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


def fresh_database(name: str) -> str:
    asyncio.run(sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    migrate(Settings(database_url=f"{PG}/{name}"))
    asyncio.run(
        sql(
            name,
            # one skill at cost 1, its creation in the history like the API writes it
            f"INSERT INTO skills (name, display_name, cost) VALUES ('{SKILL}', 'Bench', 1)",
            "INSERT INTO skill_history (skill_id, version, actor, changes)"
            " SELECT id, 1, 'bench', '{\"cost\": [null, 1]}' FROM skills",
            # 10 000 users and a hot one, each with one GRANT that the log proves
            f"INSERT INTO users (user_id, credits) SELECT 'bench_' || g, {BIG}"
            f" FROM generate_series(0, {USERS - 1}) g",
            f"INSERT INTO users (user_id, credits) VALUES ('bench_hot', {BIG}),"
            " ('bench_deep', 0), ('bench_overdraw', 0)",
            "INSERT INTO transactions (user_id, type, amount, balance_after)"
            " SELECT user_id, 'GRANT', credits, credits FROM users WHERE credits > 0",
            # bench_deep has a history of its own from the start: 200 GRANTs of 1
            "INSERT INTO transactions (user_id, type, amount, balance_after)"
            " SELECT 'bench_deep', 'GRANT', 1, k FROM generate_series(1, 200) k ORDER BY k",
            "UPDATE users SET credits = 200 WHERE user_id = 'bench_deep'",
        )
    )
    return f"{PG}/{name}"


async def _grow_log(db: str, rows: int) -> None:
    """Append ``rows`` GRANT rows of 1 credit (90 % spread over the users, 10 % on
    bench_deep), keeping every balance_after and balance true to the log."""
    spread, deep = rows * 9 // 10, rows // 10
    per_user = spread // USERS
    await sql(
        db,
        "INSERT INTO transactions (user_id, type, amount, balance_after)"
        " SELECT u.user_id, 'GRANT', 1, u.credits + k"
        f" FROM users u CROSS JOIN generate_series(1, {per_user}) k"
        " WHERE u.user_id LIKE 'bench\\_%' AND u.user_id ~ '^bench_[0-9]+$'"
        " ORDER BY k, u.user_id",
        f"UPDATE users SET credits = credits + {per_user} WHERE user_id ~ '^bench_[0-9]+$'",
        "INSERT INTO transactions (user_id, type, amount, balance_after)"
        " SELECT 'bench_deep', 'GRANT', 1, u.credits + k"
        f" FROM users u CROSS JOIN generate_series(1, {deep}) k"
        " WHERE u.user_id = 'bench_deep' ORDER BY k",
        f"UPDATE users SET credits = credits + {deep} WHERE user_id = 'bench_deep'",
        "VACUUM ANALYZE transactions",
    )


async def _api_key(url: str) -> str:
    db = Database(Settings(database_url=url))
    try:
        async with db.engine.begin() as conn:
            return (await create_key(conn, f"bench-{uuid.uuid4().hex[:6]}", "service")).token
    finally:
        await db.dispose()


async def _reconcile(url: str) -> list[str]:
    db = Database(Settings(database_url=url, db_command_timeout=600))
    try:
        async with db.autocommit.connect() as conn:
            return await reconcile(conn)
    finally:
        await db.dispose()


# ---- servers and load --------------------------------------------------------------


@dataclass
class Server:
    name: str
    argv: list[str]
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.proc = subprocess.Popen(
            argv,
            env={**os.environ, **self.env},
            cwd=ROOT,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.post(f"{self.url}/v1/charges", content=b"{}", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not start")

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        children = [int(p) for p in out.stdout.split()]
        spawned = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        return spawned or [self.proc.pid]

    def stop(self) -> None:
        if self.proc is not None:
            os.killpg(self.proc.pid, 15)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, 9)
                self.proc.wait()
            self.proc = None


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def wrk(url: str, concurrency: int, seconds: float, **env: str) -> dict:
    threads = 1 if concurrency == 1 else 2
    out = subprocess.run(
        [
            "wrk",
            "-t",
            str(threads),
            "-c",
            str(concurrency),
            "-d",
            f"{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(ROOT / "bench" / "charge.lua"),
            url,
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    line = next(x for x in out.stdout.splitlines() if x.startswith("JSON "))
    result = json.loads(line[5:])
    result["rate"] = result["requests"] / result["seconds"]
    result["statuses"] = {int(k): v for k, v in result["statuses"].items()}
    return result


def load_env(token: str, pattern: str, keys: bool) -> dict[str, str]:
    env = {
        "BENCH_TOKEN": token,
        "BENCH_SKILL": SKILL,
        "BENCH_USERS": str(USERS),
        "BENCH_KEYS": "1" if keys else "0",
        "BENCH_RUN": uuid.uuid4().hex[:8],
    }
    if pattern == "hot":
        env["BENCH_HOT"] = "bench_hot"
    return env


# ---- phases ------------------------------------------------------------------------


def throughput(servers: list[Server], token: str, seconds: float) -> list[dict]:
    rows = []
    for server in servers:
        server.start()
        try:
            wrk(server.url, 32, 2, **load_env(token, "spread", True))  # warm up
            for pattern in ("spread", "hot"):
                for c in CONCURRENCY:
                    r = wrk(server.url, c, seconds, **load_env(token, pattern, True))
                    r |= {"target": server.name, "pattern": pattern, "concurrency": c}
                    rows.append(r)
                    log(
                        f"{server.name:16} {pattern:6} c={c:<3} {r['rate']:8.0f}/s"
                        f" p50={r['p50'] / 1000:.2f}ms p99={r['p99'] / 1000:.2f}ms"
                        f" statuses={r['statuses']}"
                    )
        finally:
            server.stop()
    return rows


def ratios(servers: list[Server], token: str, seconds: float, rounds: int) -> dict:
    """c=32 on every target, ``rounds`` times, the targets interleaved in each round.

    One 5-second point per target is too noisy on 2 shared cores (the same target moved
    by a quarter between full runs); interleaving lets a slow spell of the machine hit
    every target alike, and the ratios are taken between medians. Every other round runs
    the targets in reverse order, so no target always follows the same one.
    """
    runs: dict[str, dict[str, list[float]]] = {}
    for round_ in range(rounds):
        for server in servers if round_ % 2 == 0 else servers[::-1]:
            server.start()
            try:
                wrk(server.url, 32, 2, **load_env(token, "spread", True))  # warm up
                for pattern in ("spread", "hot"):
                    r = wrk(server.url, 32, seconds, **load_env(token, pattern, True))
                    runs.setdefault(server.name, {}).setdefault(pattern, []).append(r["rate"])
            finally:
                server.stop()
        log(
            f"ratio round {round_ + 1}/{rounds}: "
            + ", ".join(
                f"{name} {p['spread'][-1]:.0f}/{p['hot'][-1]:.0f}" for name, p in runs.items()
            )
        )
    return _medians(runs)


def _medians(runs: dict[str, dict[str, list[float]]]) -> dict:
    return {
        name: {pattern: {"median": sorted(v)[len(v) // 2], "runs": v} for pattern, v in p.items()}
        for name, p in runs.items()
    }


def overdraw(server: Server, db: str, token: str, balance: int = 500) -> dict:
    """One user with ``balance`` credits, cost 1, 128 concurrent charges for 3 s."""
    asyncio.run(
        sql(
            db.rsplit("/", 1)[1],
            "DELETE FROM transactions WHERE user_id = 'bench_overdraw'",
            f"UPDATE users SET credits = {balance} WHERE user_id = 'bench_overdraw'",
            f"INSERT INTO transactions (user_id, type, amount, balance_after)"
            f" VALUES ('bench_overdraw', 'GRANT', {balance}, {balance})",
        )
    )
    server.start()
    try:
        env = load_env(token, "spread", False) | {"BENCH_HOT": "bench_overdraw"}
        r = wrk(server.url, 128, 3, **env)
    finally:
        server.stop()

    async def state():
        conn = await asyncpg.connect(db)
        try:
            return await conn.fetchrow(
                "SELECT u.credits, (SELECT sum(amount) FROM transactions t"
                " WHERE t.user_id = u.user_id) AS logged,"
                " (SELECT count(*) FROM transactions t WHERE t.user_id = u.user_id"
                "  AND t.type = 'CONSUMPTION') AS charges"
                " FROM users u WHERE user_id = 'bench_overdraw'"
            )
        finally:
            await conn.close()

    row = asyncio.run(state())
    return {
        "target": server.name,
        "balance": balance,
        "accepted": r["statuses"].get(201, 0),
        "refused": r["statuses"].get(402, 0),
        "charges_logged": row["charges"],
        "credits_after": row["credits"],
        "log_sum": int(row["logged"]),
        "other": {k: v for k, v in r["statuses"].items() if k not in (201, 402)},
    }


def scaling(make_server, db: str, url: str, token: str, seconds: float) -> list[dict]:
    rows = []
    current = 0
    for level in LEVELS:
        if level > current:
            log(f"growing the log to {level:,} rows")
            asyncio.run(_grow_log(db.rsplit("/", 1)[1], level - current))
            current = level
        total = asyncio.run(fetchval(db.rsplit("/", 1)[1], "SELECT count(*) FROM transactions"))
        # the bulk load's dirty pages are flushed now, not by a checkpoint during the runs
        asyncio.run(sql(db.rsplit("/", 1)[1], "CHECKPOINT"))
        server = make_server()
        server.start()
        try:
            wrk(server.url, 32, 2, **load_env(token, "spread", True))
            # the median of three runs: one short run on shared cores is too noisy here
            runs = [wrk(server.url, 32, seconds, **load_env(token, "spread", True)) for _ in "123"]
            charge = sorted(runs, key=lambda r: r["rate"])[1]
            first = wrk(
                server.url,
                8,
                seconds,
                BENCH_TOKEN=token,
                BENCH_METHOD="GET",
                BENCH_GET_PATH="/v1/users/bench_deep/transactions?limit=50",
            )
            cursor = _deep_cursor(server.url, token)
            deep = wrk(
                server.url,
                8,
                seconds,
                BENCH_TOKEN=token,
                BENCH_METHOD="GET",
                BENCH_GET_PATH=f"/v1/users/bench_deep/transactions?limit=50&cursor={cursor}",
            )
        finally:
            server.stop()
        row = {
            "level": level,
            "rows": total,
            "charges_per_s": charge["rate"],
            "charge_p50": charge["p50"],
            "first_page_p50": first["p50"],
            "deep_page_p50": deep["p50"],
            "statuses": charge["statuses"],
            "page_statuses": {"first": first["statuses"], "deep": deep["statuses"]},
        }
        rows.append(row)
        log(
            f"log {total:>11,} rows: {charge['rate']:.0f} charges/s,"
            f" history first p50 {first['p50'] / 1000:.2f} ms, deep p50 {deep['p50'] / 1000:.2f} ms"
        )
    return rows


def _deep_cursor(url: str, token: str) -> str:
    """A cursor near the oldest end of bench_deep's history."""
    from skill_credits.ledger.repository import encode_cursor

    async def oldest() -> int:
        conn = await asyncpg.connect(os.environ["BENCH_DB_URL"])
        try:
            return await conn.fetchval(
                "SELECT seq FROM transactions WHERE user_id = 'bench_deep'"
                " ORDER BY seq ASC OFFSET 100 LIMIT 1"
            )
        finally:
            await conn.close()

    seq = asyncio.run(oldest())
    return encode_cursor(seq) if seq else ""


def memory(server: Server, token: str, total: int) -> dict:
    server.start()
    try:
        pid = server.worker_pids()[0]
        marks = {"start": rss_kib(pid)}
        done = 0
        checkpoints = [total // 10, total]
        while checkpoints:
            r = wrk(server.url, 32, 20, **load_env(token, "spread", True))
            done += r["requests"]
            while checkpoints and done >= checkpoints[0]:
                marks[f"after {checkpoints.pop(0):,}"] = rss_kib(pid)
            log(f"memory: {done:,} requests, RSS {rss_kib(pid) / 1024:.1f} MiB")
    finally:
        server.stop()
    return {"requests": done, "rss_kib": marks}


def profile(server: Server, token: str, seconds: int) -> dict:
    """py-spy on the worker under c=32 load; own time per function and time per layer."""
    server.start()
    out = RESULTS / "profile.txt"
    try:
        pid = server.worker_pids()[0]
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(pid),
                "--duration",
                str(seconds),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wrk(server.url, 32, seconds + 1, **load_env(token, "spread", True))
        spy.wait(timeout=60)
    finally:
        server.stop()
    own: collections.Counter = collections.Counter()
    layers: collections.Counter = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        layers[_layer(frames)] += n
    return {
        "samples": total,
        "own": [(f, n / total) for f, n in own.most_common(15)],
        "layers": [(k, n / total) for k, n in layers.most_common()],
    }


def breakdown() -> list[dict]:
    """bench/breakdown.py in a process of its own (its metrics in multiprocess mode)."""
    log("CPU per charge, piece by piece (bench/breakdown.py)")
    out = RESULTS / "breakdown.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "breakdown.py"), "--json", str(out)], check=True
    )
    return json.loads(out.read_text())


LAYERS = (
    ("uvloop/event loop idle", ("select", "run_forever", "_run_once")),
    ("asyncpg (driver)", ("asyncpg",)),
    ("SQLAlchemy", ("sqlalchemy",)),
    ("redis client", ("redis/",)),
    ("msgspec", ("msgspec",)),
    ("skill_credits", ("skill_credits",)),
    ("Litestar", ("litestar",)),
    ("uvicorn/httptools", ("uvicorn", "httptools")),
)


def _layer(frames: list[str]) -> str:
    """The innermost frame's library, read from its file path."""
    leaf = frames[-1]
    for name, needles in LAYERS:
        if any(n in leaf for n in needles):
            return name
    return "other (stdlib, asyncio)"


# ---- report ------------------------------------------------------------------------


def machine() -> dict:
    def version(cmd: list[str]) -> str:
        try:
            return (
                subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
            )
        except (OSError, IndexError):
            return "?"

    mem = next(
        x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
    )
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    import importlib.metadata as md

    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{int(mem.split()[1]) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": version(["psql", "--version"]),
        "redis": version(["redis-server", "--version"]),
        "wrk": version(["wrk", "--version"]) or "wrk",
        "packages": {
            p: md.version(p)
            for p in ("litestar", "sqlalchemy", "asyncpg", "redis", "msgspec", "uvicorn")
        },
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, pattern in zip(axes, ("spread", "hot"), strict=True):
        for target in sorted({r["target"] for r in rows}):
            pts = [
                (r["concurrency"], r["rate"])
                for r in rows
                if r["target"] == target and r["pattern"] == pattern
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=target)
        ax.set_xscale("log", base=2)
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("charges / s")
        ax.set_title("10 000 users" if pattern == "spread" else "one hot user")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("POST /v1/charges throughput (2 cores, PostgreSQL and Redis on the same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def report(data: dict) -> str:
    m = data["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Run by `make bench` on {data['date']} on this machine: {m['cores']} cores ({m['cpu']}),"
        f" {m['memory']} memory, Linux {m['kernel']}, Python {m['python']}, {m['postgres']},"
        f" Redis {m['redis'].split('v=')[-1].split()[0] if 'v=' in m['redis'] else m['redis']},"
        f" {m['wrk'].split(' [')[0]}. Packages: "
        + ", ".join(f"{k} {v}" for k, v in m["packages"].items())
        + ".",
        "",
        "PostgreSQL, Redis, the server under test and `wrk` share the same 2 cores, so",
        "every number is lower than on separate machines; the ratios are what matters.",
        f"Each point is {data['seconds']:g} s of `wrk` after a warm-up. Every target gets the",
        "same requests; half of them carry a fresh `Idempotency-Key`.",
        "",
        "- **skill-credits**: `skill-credits serve --workers N`, as deployed: API-key auth,",
        "  strict validation, the Redis skill cache, idempotency, problem details.",
        "- **ceiling**: `bench/ceiling_app.py`, a minimal Litestar handler running only the",
        "  same charge statement over an asyncpg pool (no auth, validation, cache); a",
        "  request's `Idempotency-Key` goes into the statement unchecked, so the database",
        "  does the same work for it.",
        "- **ceiling + Redis GET**: the ceiling reading the skill's cache entry from Redis",
        "  first, one read per charge (a skill-credits worker reads it about once a second).",
        "- **original**: `bench/original_app.py`, the straightforward `chargeUser` design",
        "  as most teams would write it: one SQLAlchemy ORM session transaction that reads the skill,",
        "  reads the user, checks in Python, then updates and inserts.",
        "",
        "![throughput](docs/bench-throughput.png)",
        "",
        "## Throughput and latency",
        "",
        "| target | users | conc. | charges/s | p50 ms | p99 ms | p99.9 ms | statuses | socket errors |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in data["throughput"]:
        errors = sum(r["errors"].values())
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        lines.append(
            f"| {r['target']} | {'10 000' if r['pattern'] == 'spread' else 'one hot'} |"
            f" {r['concurrency']} | {r['rate']:.0f} | {r['p50'] / 1000:.2f} |"
            f" {r['p99'] / 1000:.2f} | {r['p999'] / 1000:.2f} | {statuses} | {errors} |"
        )
    lines += [
        "",
        "## Ratios at concurrency 32",
        "",
        f"Every target {len(next(iter(data['ratios'].values()))['spread']['runs'])} times"
        f" at c=32 for {data['seconds']:g} s per pattern, the targets interleaved round by"
        " round (in reverse order every other round); charges/s are medians, and the ratios"
        " are taken between them." + (f" {data['ratios_note']}" if data.get("ratios_note") else ""),
        "",
        "| target | 10 000 users: median charges/s (runs) | one hot user: median (runs) |",
        "|---|---:|---:|",
    ]
    for name, p in data["ratios"].items():
        lines.append(
            f"| {name} | "
            + " | ".join(
                f"{p[k]['median']:.0f} ({', '.join(f'{x:.0f}' for x in p[k]['runs'])})"
                for k in ("spread", "hot")
            )
            + " |"
        )

    def med(target: str, pattern: str) -> float:
        return data["ratios"][target][pattern]["median"]

    lines += [
        "",
        "| users | skill-credits 1 w ÷ ceiling 1 w | skill-credits 2 w ÷ ceiling 2 w |"
        " skill-credits 1 w ÷ original 1 w | skill-credits 2 w ÷ original 2 w |"
        " ceiling + Redis GET 1 w ÷ ceiling 1 w | skill-credits 1 w ÷ ceiling + Redis GET 1 w |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for pattern in ("spread", "hot"):
        sc1, sc2 = med("skill-credits 1w", pattern), med("skill-credits 2w", pattern)
        floor = med("ceiling + Redis GET 1w", pattern)
        lines.append(
            f"| {'10 000' if pattern == 'spread' else 'one hot'} |"
            f" {sc1 / med('ceiling 1w', pattern):.2f} | {sc2 / med('ceiling 2w', pattern):.2f} |"
            f" {sc1 / med('original 1w', pattern):.2f} | {sc2 / med('original 2w', pattern):.2f} |"
            f" {floor / med('ceiling 1w', pattern):.2f} | {sc1 / floor:.2f} |"
        )
    lines += [
        "",
        "## Does it overdraw? One user, 128 concurrent charges",
        "",
        "| target | balance | 201 answered | 402 answered | CONSUMPTION rows |"
        " credits after | sum of the log | other statuses |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for o in data["overdraw"]:
        lines.append(
            f"| {o['target']} | {o['balance']} | {o['accepted']} | {o['refused']} |"
            f" {o['charges_logged']} | {o['credits_after']} | {o['log_sum']} |"
            f" {o['other'] or '-'} |"
        )
    lines += [
        "",
        "## How cost grows with the log (skill-credits, 2 workers)",
        "",
        "Charges/s is the median of three runs at each size; a `CHECKPOINT` after each bulk",
        "load keeps its flush out of the runs.",
        "",
        "| log rows | charges/s (c=32) | charge p50 ms | history first page p50 ms |"
        " history deep page p50 ms | page answers |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for s in data["scaling"]:
        lines.append(
            f"| {s['rows']:,} | {s['charges_per_s']:.0f} | {s['charge_p50'] / 1000:.2f} |"
            f" {s['first_page_p50'] / 1000:.2f} | {s['deep_page_p50'] / 1000:.2f} |"
            f" {s['page_statuses']} |"
        )
    mem = data["memory"]
    lines += [
        "",
        f"## Memory of one worker ({mem['requests']:,} requests, c=32)",
        "",
        *([mem["note"] + ".", ""] if mem.get("note") else []),
        "| when | RSS MiB |",
        "|---|---:|",
    ]
    for k, v in mem["rss_kib"].items():
        lines.append(f"| {k} | {v / 1024:.1f} |")
    prof = data["profile"]
    lines += [
        "",
        f"## Where a worker's time goes (py-spy, {prof['samples']:,} samples at c=32)",
        "",
        "| innermost frame in | share |",
        "|---|---:|",
    ]
    for name, share in prof["layers"]:
        lines.append(f"| {name} | {share:.1%} |")
    lines += ["", "| function (own time) | share |", "|---|---:|"]
    for name, share in prof["own"][:12]:
        lines.append(f"| `{name[:110]}` | {share:.1%} |")
    if data.get("breakdown"):
        lines += [
            "",
            "## Where a charge's CPU goes, piece by piece (`bench/breakdown.py`)",
            "",
            "Each app driven in-process on uvloop (no HTTP server, no load generator), so the",
            "figure is the app's own CPU per charge; each step adds one piece to the one before.",
            "HTTP parsing by uvicorn comes on top of every row alike. One request at a time, and",
            "32 at a time as at c=32. Both ways, a worker reads its skill from Redis about once",
            "a second (cache.py), so the cache costs skill-credits little here.",
            "",
            "| step | CPU µs per charge, 1 at a time | added to the step it builds on | 32 at"
            " a time | added |",
            "|---|---:|---:|---:|---:|",
        ]
        breakdown = data["breakdown"]
        steps = breakdown["steps"] if isinstance(breakdown, dict) else breakdown
        for index, row in enumerate(steps):
            base = row.get("adds_to", index - 1 if index else None)
            before = steps[base] if base is not None else None
            cells = []
            for field in ("cpu_us", "cpu_us_32"):
                value = row.get(field)
                cells.append("-" if value is None else f"{value:.0f}")
                earlier = before.get(field) if before else None
                cells.append("" if value is None or earlier is None else f"{value - earlier:+.0f}")
            lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
        pieces = breakdown.get("pieces", []) if isinstance(breakdown, dict) else []
        if pieces:
            lines += [
                "",
                "What each piece of skill-credits' request handling costs a charge at c=32: the",
                "app of step 4 (no I/O, so the database's noise does not drown these few µs) with",
                "every piece, then without that one; alternately, medians of three each.",
                "",
                "| piece | with it µs | without it µs | the piece costs µs |",
                "|---|---:|---:|---:|",
            ]
            for row in pieces:
                lines.append(
                    f"| {row['without']} | {row['deployed_us']:.0f} | {row['without_us']:.0f}"
                    f" | {row['deployed_us'] - row['without_us']:+.0f} |"
                )
    lines += ["", "## Reconcile", ""]
    for name, problems in data["reconcile"].items():
        lines.append(f"- {name}: {'clean' if not problems else f'{len(problems)} differences'}")
    lines += ["", data.get("analysis", ""), ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", 5)))
    parser.add_argument("--quick", action="store_true", help="small log levels and memory run")
    parser.add_argument(
        "--reuse-memory",
        action="store_true",
        help="skip the 1 M-request memory run; keep the last run's figures",
    )
    parser.add_argument(
        "--ratios-only",
        action="store_true",
        help="measure only the c=32 ratio rounds and the CPU breakdown; keep the rest",
    )
    parser.add_argument(
        "--add-rounds",
        action="store_true",
        help="with --ratios-only: add the new rounds to the last run's instead of replacing them",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=RATIO_ROUNDS,
        help="with --ratios-only: how many interleaved rounds to measure",
    )
    parser.add_argument(
        "--breakdown-only",
        action="store_true",
        help="measure only the CPU breakdown (bench/breakdown.py); keep the rest",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite BENCHMARKS.md and the plot from bench/results/latest.json",
    )
    args = parser.parse_args()
    if args.breakdown_only:
        data = json.loads((RESULTS / "latest.json").read_text())
        data["breakdown"] = breakdown()
        data["breakdown_run"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        (RESULTS / "latest.json").write_text(json.dumps(data, indent=1, default=str))
        args.report_only = True
    if args.report_only:
        data = json.loads((RESULTS / "latest.json").read_text())
        if "breakdown" not in data and (RESULTS / "breakdown.json").exists():
            data["breakdown"] = json.loads((RESULTS / "breakdown.json").read_text())
        analysis = ROOT / "bench" / "analysis.md"
        data["analysis"] = analysis.read_text() if analysis.exists() else ""
        plot(data["throughput"], ROOT / "docs" / "bench-throughput.png")
        (ROOT / "BENCHMARKS.md").write_text(report(data))
        log("rewrote BENCHMARKS.md and docs/bench-throughput.png")
        return
    global LEVELS
    if args.quick:
        LEVELS = (0, 100_000, 1_000_000)
    memory_requests = 100_000 if args.quick else 1_000_000
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    prefix = f"bench_{run}:"
    sc_db, original_db = f"sc_bench_{run}", f"sc_bench_original_{run}"
    scale_db = f"sc_bench_scale_{run}"
    log("seeding databases")
    sc_url, original_url = fresh_database(sc_db), fresh_database(original_db)
    os.environ["BENCH_DB_URL"] = sc_url
    token = asyncio.run(_api_key(sc_url))
    python = sys.executable

    def sc(workers: int) -> Server:
        return Server(
            f"skill-credits {workers}w",
            [
                python,
                "-m",
                "skill_credits.cli",
                "serve",
                "--port",
                "{port}",
                "--workers",
                str(workers),
            ],
            {"DATABASE_URL": sc_url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix},
        )

    def plain(name: str, module: str, url: str, workers: int, **env: str) -> Server:
        return Server(
            f"{name} {workers}w",
            [
                python,
                "-m",
                "uvicorn",
                f"{module}:create_app",
                "--factory",
                "--port",
                "{port}",
                "--workers",
                str(workers),
                "--log-level",
                "warning",
                "--no-access-log",
            ],
            {"DATABASE_URL": url, "BENCH_KEY_ID": token.split("_")[1], **env},
        )

    data: dict = {
        "date": dt.date.today().isoformat(),
        "started": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds,
        "machine": machine(),
        "reconcile": {},
    }
    try:

        def targets() -> list[Server]:
            return [
                sc(1),
                sc(2),
                plain("ceiling", "bench.ceiling_app", sc_url, 1),
                plain("ceiling", "bench.ceiling_app", sc_url, 2),
                plain(
                    "ceiling + Redis GET",
                    "bench.ceiling_app",
                    sc_url,
                    1,
                    CEILING_REDIS_URL=REDIS_URL,
                    CEILING_REDIS_KEY=f"{prefix}skill:{SKILL}",
                ),
                plain("original", "bench.original_app", original_url, 1),
                plain("original", "bench.original_app", original_url, 2),
            ]

        if args.ratios_only:
            data = json.loads((RESULTS / "latest.json").read_text())
            new = ratios(targets(), token, args.seconds, args.rounds)
            if args.add_rounds:  # the medians over the earlier rounds and these
                new = _medians(
                    {
                        name: {
                            pattern: data["ratios"][name][pattern]["runs"] + result["runs"]
                            for pattern, result in patterns.items()
                        }
                        for name, patterns in new.items()
                    }
                )
            data["ratios"] = new
            data["breakdown"] = breakdown()
            data["ratios_run"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
            (RESULTS / "latest.json").write_text(json.dumps(data, indent=1, default=str))
            (ROOT / "BENCHMARKS.md").write_text(report(data))
            log("ratios measured again; rewrote BENCHMARKS.md and bench/results/latest.json")
            return
        data["throughput"] = throughput(targets(), token, args.seconds)
        data["ratios"] = ratios(targets(), token, args.seconds, RATIO_ROUNDS)
        data["overdraw"] = [
            overdraw(sc(2), sc_url, token),
            overdraw(plain("original", "bench.original_app", original_url, 2), original_url, token),
        ]
        data["reconcile"]["skill-credits and ceiling, after the throughput runs"] = asyncio.run(
            _reconcile(sc_url)
        )
        data["reconcile"]["original, after its runs"] = asyncio.run(_reconcile(original_url))
        data["profile"] = profile(sc(1), token, 10)
        data["breakdown"] = breakdown()
        if args.reuse_memory:
            previous = json.loads((RESULTS / "latest.json").read_text())
            data["memory"] = previous["memory"] | {
                "note": f"Measured in the full run of {previous.get('started', previous['date'])}"
                " on this machine; this run reused it"
            }
        else:
            data["memory"] = memory(sc(1), token, memory_requests)
        # the log-size runs start from a fresh database, so "0 rows" means it
        log("seeding the database of the log-size runs")
        scale_url = fresh_database(scale_db)
        os.environ["BENCH_DB_URL"] = scale_url
        scale_token = asyncio.run(_api_key(scale_url))

        def sc_scale() -> Server:
            return Server(
                "skill-credits 2w",
                [python, "-m", "skill_credits.cli", "serve", "--port", "{port}", "--workers", "2"],
                {"DATABASE_URL": scale_url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix + "s:"},
            )

        data["scaling"] = scaling(sc_scale, scale_url, scale_url, scale_token, args.seconds)
        data["reconcile"][f"skill-credits, after the {LEVELS[-1]:,}-row run"] = asyncio.run(
            _reconcile(scale_url)
        )
        analysis = ROOT / "bench" / "analysis.md"
        data["analysis"] = analysis.read_text() if analysis.exists() else ""
        (RESULTS / "latest.json").write_text(json.dumps(data, indent=1, default=str))
        plot(data["throughput"], ROOT / "docs" / "bench-throughput.png")
        (ROOT / "BENCHMARKS.md").write_text(report(data))
        log("wrote BENCHMARKS.md, docs/bench-throughput.png, bench/results/latest.json")
    finally:
        for name in (sc_db, original_db, scale_db):
            asyncio.run(sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(match=f"{prefix}*", count=500):
            client.delete(key)


if __name__ == "__main__":
    main()
