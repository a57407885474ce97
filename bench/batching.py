"""Charge batching against the ceiling and the naive handler, in one run: skill-credits with
batching (as deployed), skill-credits with it off (`CHARGE_BATCH_MAX=1`), the ceiling app
(skill-credits' own charge statement per request, never batched) and the naive handler
(bench/naive_app.py: what a team would write in an afternoon, on a minimal schema of its
own), 1 and 2 workers each, in interleaved rounds (every other round in reverse order).

Each round, on every target: 10 000 users at c=32, the one hot user at c=32, and 10 000
users at c=1, half the charges keyed. Per point: charges/s, p50, p99; PostgreSQL's CPU per
charge (user + system time of every PostgreSQL process, from /proc, over the charges made)
and the server's (its process group: the server and its workers);
for skill-credits, the sizes of the batches it sent (its /metrics histogram). Medians over
the rounds; ratios between medians.

    uv run --group bench python bench/batching.py [--rounds 3] [--seconds 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import create_keys, delete_prefix, drop_databases  # noqa: E402
from tests.support.processes import AppServer, batch_size_histogram  # noqa: E402

from bench.databases import PG, REDIS_URL, fresh_database, naive_tables  # noqa: E402
from bench.phases import cpu_seconds, load_env, log, warm_up, wrk  # noqa: E402
from bench.servers import Target, plain  # noqa: E402

POINTS = (("spread", 32), ("hot", 32), ("spread", 1))
HISTOGRAM = "skill_credits_batch_size"


def batch_histogram(url: str) -> dict[str, float]:
    return batch_size_histogram(httpx.get(f"{url}/metrics", timeout=5).text, "charge")


def batches(before: dict[str, float], after: dict[str, float]) -> dict:
    """Calls and charges between two scrapes, and the calls by batch size bucket."""
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    calls = delta.get(f"{HISTOGRAM}_count", 0)
    charges = delta.get(f"{HISTOGRAM}_sum", 0)
    buckets, below = {}, 0.0
    for key in sorted(
        (k for k in delta if k.startswith(f"{HISTOGRAM}_bucket")),
        key=lambda k: float(k.split('le="')[1].rstrip('"}').replace("+Inf", "inf")),
    ):
        le = key.split('le="')[1].rstrip('"}')
        buckets[le] = int(delta[key] - below)
        below = delta[key]
    return {
        "calls": int(calls),
        "mean": charges / calls if calls else 0,
        "by_bucket": {k: v for k, v in buckets.items() if v},
    }


def measure(targets: list[Target], token: str, seconds: float, rounds: int) -> dict:
    runs: dict[str, dict[str, list[dict]]] = {}
    for round_ in range(rounds):
        for target in targets if round_ % 2 == 0 else targets[::-1]:
            with target.server as server:
                warm_up(server.url, token)
                for pattern, c in POINTS:
                    counted = target.name.startswith("skill-credits")
                    before = batch_histogram(server.url) if counted else {}
                    cpu = cpu_seconds(command="postgres")
                    own = cpu_seconds(group=server.proc.pid)  # the server and its workers
                    r = wrk(server.url, c, seconds, **load_env(token, pattern, True))
                    cpu = cpu_seconds(command="postgres") - cpu
                    own = cpu_seconds(group=server.proc.pid) - own
                    point = {
                        "rate": r["rate"],
                        "p50_ms": r["p50"] / 1000,
                        "p99_ms": r["p99"] / 1000,
                        "statuses": r["statuses"],
                        "pg_cpu_us": cpu / max(r["requests"], 1) * 1e6,
                        "server_cpu_us": own / max(r["requests"], 1) * 1e6,
                    }
                    if counted:
                        point["batches"] = batches(before, batch_histogram(server.url))
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
                for field in ("rate", "p50_ms", "p99_ms", "pg_cpu_us", "server_cpu_us")
            }
            if "batches" in values[0]:
                row["mean_batch"] = statistics.median(v["batches"]["mean"] for v in values)
                merged: dict[str, int] = {}
                for v in values:
                    for le, n in v["batches"]["by_bucket"].items():
                        merged[le] = merged.get(le, 0) + n
                row["batch_buckets"] = merged
            row["statuses"] = sorted({s for v in values for s in v["statuses"]})
            out.setdefault(name, {})[point] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    run = uuid.uuid4().hex[:6]
    prefix, name = f"bench_{run}:", f"sc_bench_batching_{run}"
    log("seeding the database")
    url = fresh_database(PG, name)
    naive_tables(url)
    try:
        [token] = asyncio.run(create_keys(url, "service"))
        ceiling = {"DATABASE_URL": url, "BENCH_KEY_ID": token.split("_")[1]}
        sc_env = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": prefix}
        naive = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL}
        targets = []
        for workers in (1, 2):
            targets += [
                Target(
                    f"skill-credits {workers}w",
                    AppServer(sc_env, workers, cwd=ROOT, quiet=True),
                ),
                Target(
                    f"skill-credits {workers}w, batching off",
                    AppServer(sc_env | {"CHARGE_BATCH_MAX": "1"}, workers, cwd=ROOT, quiet=True),
                ),
                plain("ceiling", "bench.ceiling_app", workers, ceiling),
                plain("naive handler", "bench.naive_app", workers, naive),
            ]
        runs = measure(targets, token, args.seconds, args.rounds)
        result = {"runs": runs, "summary": summary(runs)}
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        for target, points in result["summary"].items():
            for point, row in points.items():
                extra = f" batch mean {row['mean_batch']:.1f}" if "mean_batch" in row else ""
                print(
                    f"{target:34} {point:13} {row['rate']:7.0f}/s p50 {row['p50_ms']:6.2f}"
                    f" p99 {row['p99_ms']:7.2f} ms  pg {row['pg_cpu_us']:5.0f} µs/charge"
                    f" server {row['server_cpu_us']:5.0f} µs/charge"
                    f"{extra} {row['statuses']}"
                )
    finally:
        asyncio.run(drop_databases(PG, name))
        delete_prefix(REDIS_URL, prefix)


if __name__ == "__main__":
    main()
