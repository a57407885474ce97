"""The benchmark's load phases: `wrk` (with bench/charge.lua) against the targets, and what
each phase measures: throughput, the interleaved ratio rounds, overdraw, the log's growth,
memory, a profile, and the in-process CPU breakdown (bench/breakdown.py)."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.support.databases import execute

from bench import databases
from bench.databases import SKILL, SPAN_SKILL, USERS
from bench.servers import Target

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
CONCURRENCY = (1, 8, 32, 128)
RATIO_ROUNDS = 3
LEVELS = (0, 1_000_000, 10_000_000)
QUICK_LEVELS = (0, 100_000, 1_000_000)


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", flush=True)


def cpu_seconds(*, command: str | None = None, group: int | None = None) -> float:
    """User + system CPU so far of every living process whose command is ``command``
    (``postgres``: the server and its backends), or of the process group ``group`` (a
    server started in a session of its own: it and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                name, rest = f.read().rsplit(")", 1)
            values = rest.split()  # state, ppid, pgrp, ... utime is the 12th, stime the 13th
            if command is not None and not name.endswith(f"({command}"):
                continue
            if group is not None and int(values[2]) != group:
                continue
            total += int(values[11]) + int(values[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


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


def span_charges(url: str, token: str, seconds: float, users: int, start: int) -> dict:
    """Charges of SPAN_SKILL at c=32, each to a span user not charged before (from
    ``start`` on in each of wrk's two threads' stretches), half with a fresh key."""
    env = load_env(token, "spread", True) | {
        "BENCH_SKILL": SPAN_SKILL,
        "BENCH_USERS": str(users),
        "BENCH_SPAN_STRIDE": str(users // 2),
        "BENCH_SPAN_FROM": str(start),
    }
    return wrk(url, 32, seconds, **env)


def limited_charges(url: str, token: str, seconds: float, users: int, member: str) -> dict:
    """Charges at c=32 of random users ``lim_<i>`` as ``member`` (none when empty), half
    with a fresh key."""
    env = load_env(token, "spread", True) | {
        "BENCH_USERS": str(users),
        "BENCH_USER_PREFIX": "lim_",
        "BENCH_MEMBER": member,
    }
    return wrk(url, 32, seconds, **env)


def charges(url: str, token: str, pattern: str, seconds: float, concurrency: int = 32) -> dict:
    """Charges for ``seconds``, half of them with a fresh Idempotency-Key."""
    return wrk(url, concurrency, seconds, **load_env(token, pattern, True))


def warm_up(url: str, token: str) -> None:
    charges(url, token, "spread", 2)


def throughput(targets: list[Target], token: str, seconds: float) -> list[dict]:
    rows = []
    for target in targets:
        with target.server as server:
            warm_up(server.url, token)
            for pattern in ("spread", "hot"):
                for c in CONCURRENCY:
                    r = charges(server.url, token, pattern, seconds, c)
                    r |= {"target": target.name, "pattern": pattern, "concurrency": c}
                    rows.append(r)
                    log(
                        f"{target.name:16} {pattern:6} c={c:<3} {r['rate']:8.0f}/s"
                        f" p50={r['p50'] / 1000:.2f}ms p99={r['p99'] / 1000:.2f}ms"
                        f" statuses={r['statuses']}"
                    )
    return rows


def ratios(targets: list[Target], token: str, seconds: float, rounds: int) -> dict:
    """c=32 on every target, ``rounds`` times, the targets interleaved in each round.

    One 5-second point per target is too noisy on 2 shared cores (the same target moved
    by a quarter between full runs); interleaving lets a slow spell of the machine hit
    every target alike, and the ratios are taken between medians. Every other round runs
    the targets in reverse order, so no target always follows the same one.
    """
    runs: dict[str, dict[str, list[float]]] = {}
    for round_ in range(rounds):
        for target in targets if round_ % 2 == 0 else targets[::-1]:
            with target.server as server:
                warm_up(server.url, token)
                for pattern in ("spread", "hot"):
                    r = charges(server.url, token, pattern, seconds)
                    runs.setdefault(target.name, {}).setdefault(pattern, []).append(r["rate"])
        log(
            f"ratio round {round_ + 1}/{rounds}: "
            + ", ".join(
                f"{name} {p['spread'][-1]:.0f}/{p['hot'][-1]:.0f}" for name, p in runs.items()
            )
        )
    return medians(runs)


def medians(runs: dict[str, dict[str, list[float]]]) -> dict:
    return {
        name: {pattern: {"median": sorted(v)[len(v) // 2], "runs": v} for pattern, v in p.items()}
        for name, p in runs.items()
    }


def overdraw(target: Target, db_url: str, token: str, balance: int = 500) -> dict:
    """One user with ``balance`` credits, cost 1, 128 concurrent charges for 3 s."""
    asyncio.run(databases.reset_overdraw(db_url, balance))
    with target.server as server:
        env = load_env(token, "spread", False) | {"BENCH_HOT": "bench_overdraw"}
        r = wrk(server.url, 128, 3, **env)
    row = asyncio.run(databases.overdraw_state(db_url))
    return {
        "target": target.name,
        "balance": balance,
        "accepted": r["statuses"].get(201, 0),
        "refused": r["statuses"].get(402, 0),
        "charges_logged": row["charges"],
        "credits_after": row["credits"],
        "log_sum": int(row["logged"]),
        "other": {k: v for k, v in r["statuses"].items() if k not in (201, 402)},
    }


def scaling(
    make_target: Callable[[], Target], db_url: str, token: str, seconds: float, levels: tuple
) -> list[dict]:
    rows = []
    current = 0
    for level in levels:
        if level > current:
            log(f"growing the log to {level:,} rows")
            asyncio.run(databases.grow_log(db_url, level - current))
            current = level
        total = asyncio.run(databases.log_rows(db_url))
        # the bulk load's dirty pages are flushed now, not by a checkpoint during the runs
        asyncio.run(execute(db_url, "CHECKPOINT"))
        with make_target().server as server:
            warm_up(server.url, token)
            # the median of three runs: one short run on shared cores is too noisy here
            runs = [charges(server.url, token, "spread", seconds) for _ in "123"]
            charge = sorted(runs, key=lambda r: r["rate"])[1]
            first = _history(server.url, token, seconds, "")
            deep = _history(server.url, token, seconds, asyncio.run(databases.deep_cursor(db_url)))
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


def _history(url: str, token: str, seconds: float, cursor: str) -> dict:
    """bench_deep's history, 50 rows a page: the first page, or the one at ``cursor``."""
    path = "/v1/users/bench_deep/transactions?limit=50" + (f"&cursor={cursor}" if cursor else "")
    return wrk(url, 8, seconds, BENCH_TOKEN=token, BENCH_METHOD="GET", BENCH_GET_PATH=path)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def memory(target: Target, token: str, total: int) -> dict:
    with target.server as server:
        pid = target.worker_pid()
        marks = {"start": rss_kib(pid)}
        done = 0
        checkpoints = [total // 10, total]
        while checkpoints:
            r = charges(server.url, token, "spread", 20)
            done += r["requests"]
            while checkpoints and done >= checkpoints[0]:
                marks[f"after {checkpoints.pop(0):,}"] = rss_kib(pid)
            log(f"memory: {done:,} requests, RSS {rss_kib(pid) / 1024:.1f} MiB")
    return {"requests": done, "rss_kib": marks}


def profile(target: Target, token: str, seconds: int) -> dict:
    """py-spy on the worker under c=32 load; own time per function and time per layer."""
    out = RESULTS / "profile.txt"
    with target.server as server:
        spy = subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(target.worker_pid()),
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
        charges(server.url, token, "spread", seconds + 1)
        spy.wait(timeout=60)
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


def breakdown() -> dict:
    """bench/breakdown.py in a process of its own (its metrics in multiprocess mode)."""
    log("CPU per charge, piece by piece (bench/breakdown.py)")
    out = RESULTS / "breakdown.json"
    subprocess.run(
        [sys.executable, str(ROOT / "bench" / "breakdown.py"), "--json", str(out)], check=True
    )
    return json.loads(out.read_text())
