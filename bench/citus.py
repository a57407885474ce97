"""Charges on a Citus cluster beside one PostgreSQL server, in one run: skill-credits with 1
and 2 workers, batching on and off, against the machine's own PostgreSQL and against the
cluster of scripts/citus-cluster.sh (a coordinator and two workers, every node on the same
two cores as the service and the load), in interleaved rounds (every other round in reverse
order).

Per point (10 000 users at c=32, the one hot user at c=32, half the charges keyed):
charges/s, p50, p99, and the CPU per charge of each PostgreSQL server (user + system time
of its postmaster and the processes it started, from /proc): the plain server, the
coordinator, each worker. Medians over the rounds.

    make citus; uv run --group bench python bench/citus.py [--rounds 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import (  # noqa: E402
    connection,
    create_keys,
    delete_prefix,
    drop_databases,
    nodes,
)
from tests.support.processes import AppServer  # noqa: E402

from bench.databases import PG, REDIS_URL, fresh_database  # noqa: E402
from bench.phases import load_env, log, warm_up, wrk  # noqa: E402
from bench.servers import Target  # noqa: E402

CITUS = os.environ.get("BENCH_CITUS", "postgresql://postgres@127.0.0.1:9700")
POINTS = (("spread", 32), ("hot", 32))


def server_cpu(postmaster: int) -> float:
    """User + system CPU seconds so far of a PostgreSQL server: its postmaster and every
    living process it started (backends, background workers), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                values = f.read().rsplit(")", 1)[1].split()
            if int(pid) == postmaster or int(values[1]) == postmaster:
                total += int(values[11]) + int(values[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / ticks


async def postmasters(base: str, database: str) -> dict[str, int]:
    """Each server of ``base`` (a plain server, or a cluster's coordinator and workers) by
    host:port, and its postmaster's pid."""
    found = {}
    for server in await nodes(base):
        async with connection(f"{server}/{database}") as conn:
            pid = await conn.fetchval(
                "SELECT split_part(pg_read_file('postmaster.pid'), E'\\n', 1)"
            )
        found[server.rsplit("@", 1)[-1].split("//")[-1]] = int(pid)
    return found


def measure(targets: list[tuple[Target, str, dict[str, int]]], seconds: float, rounds: int) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {}
    for round_ in range(rounds):
        for target, token, servers in targets if round_ % 2 == 0 else targets[::-1]:
            with target.server as server:
                warm_up(server.url, token)
                for pattern, c in POINTS:
                    before = {name: server_cpu(pid) for name, pid in servers.items()}
                    r = wrk(server.url, c, seconds, **load_env(token, pattern, True))
                    charges = max(r["requests"], 1)
                    cpu = {
                        name: (server_cpu(pid) - before[name]) / charges * 1e6
                        for name, pid in servers.items()
                    }
                    point = {
                        "rate": r["rate"],
                        "p50_ms": r["p50"] / 1000,
                        "p99_ms": r["p99"] / 1000,
                        "statuses": r["statuses"],
                        "cpu_us": cpu,
                    }
                    runs.setdefault(target.name, {}).setdefault(f"{pattern} c={c}", []).append(
                        point
                    )
        log(
            f"round {round_ + 1}/{rounds}: "
            + ", ".join(
                f"{name} {p['spread c=32'][-1]['rate']:.0f}/{p['hot c=32'][-1]['rate']:.0f}"
                for name, p in runs.items()
            )
        )
    return runs


def summary(runs: dict) -> dict:
    out: dict = {}
    for name, points in runs.items():
        for point, values in points.items():
            row = {
                field: statistics.median(v[field] for v in values)
                for field in ("rate", "p50_ms", "p99_ms")
            }
            row["cpu_us"] = {
                server: statistics.median(v["cpu_us"][server] for v in values)
                for server in values[0]["cpu_us"]
            }
            row["statuses"] = sorted({s for v in values for s in v["statuses"]})
            out.setdefault(name, {})[point] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    prefix, name = f"bench_{run}:", f"sc_bench_citus_{run}"
    bases = {"plain": PG, "Citus": CITUS}
    try:
        targets = []
        for kind, base in bases.items():
            log(f"seeding the database on {kind}")
            url = fresh_database(base, name)
            [token] = asyncio.run(create_keys(url, "service"))
            servers = asyncio.run(postmasters(base, name))
            env = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": f"{prefix}{kind}:"}
            for workers in (1, 2):
                for batching, extra in (("", {}), (", batching off", {"CHARGE_BATCH_MAX": "1"})):
                    server = AppServer(env | extra, workers, cwd=ROOT, quiet=True)
                    target = Target(f"{kind} {workers}w{batching}", server)
                    targets.append((target, token, servers))
        runs = measure(targets, args.seconds, args.rounds)
        result = {"runs": runs, "summary": summary(runs)}
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        for target, points in result["summary"].items():
            for point, row in points.items():
                cpu = ", ".join(f"{s} {us:.0f}" for s, us in row["cpu_us"].items())
                print(
                    f"{target:26} {point:13} {row['rate']:7.0f}/s p50 {row['p50_ms']:6.2f}"
                    f" p99 {row['p99_ms']:7.2f} ms  CPU µs/charge: {cpu} {row['statuses']}"
                )
    finally:
        for base in bases.values():
            asyncio.run(drop_databases(base, name))
        delete_prefix(REDIS_URL, prefix)


if __name__ == "__main__":
    main()
