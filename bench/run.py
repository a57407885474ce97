"""`make bench`: charge throughput and latency of skill-credits, the ceiling and the original.

Everything runs on this machine against the local PostgreSQL and Redis, in databases
and a Redis key prefix of its own (dropped at the end). Load comes from `wrk`
(Debian's package) with bench/charge.lua. Results: BENCHMARKS.md, docs/bench-*.png
and bench/results/latest.json.

This file runs the phases in order; each job has its module: servers.py (the targets),
databases.py (their data), phases.py (the load and what it measures), report.py with
report.md.j2 (BENCHMARKS.md).

    uv run --group bench python bench/run.py [--seconds 5] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import shutil
import sys
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from tests.support.databases import create_keys, delete_prefix, drop_databases  # noqa: E402
from tests.support.databases import problems as reconcile  # noqa: E402

from bench import phases, report  # noqa: E402
from bench.databases import PG, REDIS_URL, SKILL, fresh_database, naive_tables, skill_cache_key  # noqa: E402
from bench.phases import RESULTS, log  # noqa: E402
from bench.servers import Target, plain, skill_credits  # noqa: E402


def arguments() -> argparse.Namespace:
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
        default=phases.RATIO_ROUNDS,
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
    return parser.parse_args()


def last_results() -> dict:
    return json.loads((RESULTS / "latest.json").read_text())


def save(data: dict) -> None:
    (RESULTS / "latest.json").write_text(json.dumps(data, indent=1, default=str))


def main() -> None:
    args = arguments()
    if args.breakdown_only:
        data = last_results()
        data["breakdown"] = phases.breakdown()
        data["breakdown_run"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        save(data)
        args.report_only = True
    if args.report_only:
        data = last_results()
        if "breakdown" not in data and (RESULTS / "breakdown.json").exists():
            data["breakdown"] = json.loads((RESULTS / "breakdown.json").read_text())
        report.write(data)
        log("rewrote BENCHMARKS.md and docs/bench-throughput.png")
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")
    RESULTS.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:6]
    prefix = f"bench_{run}:"
    sc_db, original_db = f"sc_bench_{run}", f"sc_bench_original_{run}"
    scale_db = f"sc_bench_scale_{run}"
    try:
        measure(args, prefix, sc_db, original_db, scale_db)
    finally:
        asyncio.run(drop_databases(PG, sc_db, original_db, scale_db))
        delete_prefix(REDIS_URL, prefix)


def measure(args: argparse.Namespace, prefix: str, sc_db: str, original_db: str, scale_db: str):
    log("seeding databases")
    sc_url = fresh_database(PG, sc_db)
    naive_tables(sc_url)  # the naive handler's own tables, beside skill-credits' ones
    original_url = fresh_database(PG, original_db, charged=False)
    [token] = asyncio.run(create_keys(sc_url, "service"))
    bench_key = {"BENCH_KEY_ID": token.split("_")[1]}  # the ceiling's statement checks it
    skill_key = asyncio.run(skill_cache_key(sc_url, prefix, SKILL))  # what the app reads

    def sc(workers: int) -> Target:
        return skill_credits(workers, sc_url, REDIS_URL, prefix)

    def original(workers: int) -> Target:
        return plain("original", "bench.original_app", workers, {"DATABASE_URL": original_url})

    def targets() -> list[Target]:
        ceiling = {"DATABASE_URL": sc_url, **bench_key}
        naive = {"DATABASE_URL": sc_url, "REDIS_URL": REDIS_URL}
        return [
            sc(1),
            sc(2),
            plain("ceiling", "bench.ceiling_app", 1, ceiling),
            plain("ceiling", "bench.ceiling_app", 2, ceiling),
            plain(
                "ceiling + Redis GET",
                "bench.ceiling_app",
                1,
                ceiling | {"CEILING_REDIS_URL": REDIS_URL, "CEILING_REDIS_KEY": skill_key},
            ),
            original(1),
            original(2),
            plain("naive handler", "bench.naive_app", 1, naive),
            plain("naive handler", "bench.naive_app", 2, naive),
        ]

    if args.ratios_only:
        data = last_results()
        new = phases.ratios(targets(), token, args.seconds, args.rounds)
        if args.add_rounds:  # the medians over the earlier rounds and these
            new = phases.medians(
                {
                    name: {
                        pattern: data["ratios"][name][pattern]["runs"] + result["runs"]
                        for pattern, result in patterns.items()
                    }
                    for name, patterns in new.items()
                }
            )
        data["ratios"] = new
        data["breakdown"] = phases.breakdown()
        data["ratios_run"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        save(data)
        (ROOT / "BENCHMARKS.md").write_text(report.render(data))
        log("ratios measured again; rewrote BENCHMARKS.md and bench/results/latest.json")
        return

    data: dict = {
        "date": dt.date.today().isoformat(),
        "started": dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "seconds": args.seconds,
        "machine": report.machine(),
        "reconcile": {},
    }
    data["throughput"] = phases.throughput(targets(), token, args.seconds)
    data["ratios"] = phases.ratios(targets(), token, args.seconds, phases.RATIO_ROUNDS)
    data["overdraw"] = [
        phases.overdraw(sc(2), sc_url, token),
        phases.overdraw(original(2), original_url, token),
    ]
    data["reconcile"]["skill-credits and ceiling, after the throughput runs"] = asyncio.run(
        reconcile(sc_url)
    )
    data["reconcile"]["original, after its runs"] = asyncio.run(reconcile(original_url))
    data["profile"] = phases.profile(sc(1), token, 10)
    data["breakdown"] = phases.breakdown()
    if args.reuse_memory:
        previous = last_results()
        data["memory"] = previous["memory"] | {
            "note": f"Measured in the full run of {previous.get('started', previous['date'])}"
            " on this machine; this run reused it"
        }
    else:
        data["memory"] = phases.memory(sc(1), token, 100_000 if args.quick else 1_000_000)
    # the log-size runs start from a fresh database, so "0 rows" means it
    log("seeding the database of the log-size runs")
    scale_url = fresh_database(PG, scale_db)
    [scale_token] = asyncio.run(create_keys(scale_url, "service"))
    levels = phases.QUICK_LEVELS if args.quick else phases.LEVELS
    data["scaling"] = phases.scaling(
        lambda: skill_credits(2, scale_url, REDIS_URL, prefix + "s:"),
        scale_url,
        scale_token,
        args.seconds,
        levels,
    )
    data["reconcile"][f"skill-credits, after the {levels[-1]:,}-row run"] = asyncio.run(
        reconcile(scale_url)
    )
    save(data)
    report.write(data)
    log("wrote BENCHMARKS.md, docs/bench-throughput.png, bench/results/latest.json")


if __name__ == "__main__":
    main()
