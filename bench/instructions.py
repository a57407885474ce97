"""Instructions per charge, checkout A against checkout B, counted by valgrind's callgrind.

A count of instructions is not a time: it comes out the same run after run, whatever
else the machine is doing, so it tells a cost of one per cent that charges/s on a noisy
machine cannot (bench/ab.py's rounds vary by ten). It counts work, not waiting: what a
change adds to the CPU of a worker or of PostgreSQL shows here; a new lock wait or a
new round trip would not (bench/ab.py sees those).

For each checkout, on a PostgreSQL cluster of its own:

1. the cluster and the checkout's server run as usual while its own CLI migrates and its
   own API seeds the database (bench/ab.py's seeding, with fewer users);
2. then, under callgrind, both start, every user is charged once (the server's warm-up:
   its caches, its pool, which users have limits), ``--charges`` charges of a pattern
   are made at concurrency ``--concurrency`` (half of them keyed, users at random, the
   same sequence on both sides), and both stop; and once more without the pattern's
   charges. What each part counted from start to stop in the first run, less the
   second, over the charges, is its count per charge: the server's processes,
   PostgreSQL's backends (serving the server's pool) and its own processes (the
   postmaster, the WAL writer, the checkpointer). The run without charges is made
   twice and the mean taken: how far those two differ, per charge, is the noise of
   the figures.

Patterns as in bench/ab.py: "spread" (users without limits) and "limits" (users with a
day limit and their member's hour limit; on a checkout without limits, the same users
without them, charged without a member).

    uv run --group bench python bench/instructions.py --a ../old-checkout --b .
        [--charges 1000] [--concurrency 8] [--patterns spread,limits]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.processes import PostgresCluster, wait_until  # noqa: E402

from bench.ab import Side, checkouts_parser  # noqa: E402
from bench.databases import SKILL  # noqa: E402
from bench.phases import log  # noqa: E402

USERS = 300
LIMIT_USERS = 100
PATTERNS = ("spread", "limits")
GRIND = ("valgrind", "--tool=callgrind", "--trace-children=yes", "--vgdb=no")


class GrindCluster(PostgresCluster):
    """A PostgreSQL cluster of its own that can also run under callgrind (each process's
    count goes to ``cg/<run>/pg.<pid>``). Autovacuum is off: no work of its own in a
    count."""

    SETTINGS = ("autovacuum=off", "fsync=off", "listen_addresses=127.0.0.1", "max_connections=50")

    def __init__(self) -> None:
        super().__init__()
        self.counts = Path(self.dir) / "cg"
        self.counts.mkdir()
        shutil.chown(self.counts, "postgres", "postgres")
        self.grinding: subprocess.Popen | None = None

    def start(self) -> None:
        options = " ".join(f"-c {s}" for s in self.SETTINGS)
        self._run(
            "pg_ctl", "-D", self.data, "-o", f"-p {self.port} -k {self.dir} {options}",
            "-l", os.path.join(self.dir, "log"), "-w", "start",
        )  # fmt: skip

    def start_grinding(self, counts: Path) -> None:
        postgres = str(self.bin / "postgres")
        argv = [*GRIND, f"--callgrind-out-file={counts}/pg.%p", postgres]
        argv += ["-D", self.data, "-p", str(self.port), "-k", self.dir]
        argv += [a for s in self.SETTINGS for a in ("-c", s)]
        self.grinding = subprocess.Popen(
            ["runuser", "-u", "postgres", "--", *argv],
            stdout=subprocess.DEVNULL,
            stderr=open(os.path.join(self.dir, "grind.log"), "ab"),  # noqa: SIM115
        )
        wait_until(self.ready, 300, interval=1)

    def ready(self) -> bool:
        async def connect() -> bool:
            await (await asyncpg.connect(f"{self.url}/postgres")).close()
            return True

        return asyncio.run(connect())

    def stop(self, mode: str = "fast") -> None:
        if self.grinding is None:
            super().stop(mode)
            return
        self._run("pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "300", "stop")
        self.grinding.wait(timeout=60)
        self.grinding = None


def totals(files: list[Path]) -> dict[int, int]:
    """Instructions (Ir) of each callgrind output file, by the pid its name carries."""
    counts: dict[int, int] = {}
    for f in files:
        found = re.search(r"^(?:summary|totals): (\d+)", f.read_text(errors="replace"), re.M)
        pid = int(f.name.split(".")[1])
        counts[pid] = counts.get(pid, 0) + (int(found.group(1)) if found else 0)
    return counts


async def background(url: str) -> set[int]:
    """PostgreSQL's own processes that are not serving a client (the postmaster is not
    among them)."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE backend_type <> 'client backend'"
        )
        return {r["pid"] for r in rows}
    finally:
        await conn.close()


def bodies(pattern: str, member: str, n: int, seed: int) -> list[tuple[dict, dict]]:
    """``n`` charges of ``pattern``: (body, headers), every second one keyed."""
    rng = random.Random(seed)
    prefix, users = ("lim_", LIMIT_USERS) if pattern == "limits" else ("bench_", USERS)
    out = []
    for i in range(n):
        body = {"user_id": f"{prefix}{rng.randrange(users)}", "skill": SKILL}
        if pattern == "limits" and member:
            body["member"] = member
        headers = {"Idempotency-Key": f"ins-{seed}-{uuid.uuid4().hex}"} if i % 2 else {}
        out.append((body, headers))
    return out


async def charge_all(url: str, token: str, charges: list[tuple[dict, dict]], c: int) -> dict:
    """Every charge of ``charges``, ``c`` at a time: the count of each status, and under
    "each" the status of each charge."""
    each = [0] * len(charges)
    queue = iter(enumerate(charges))
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=600) as http:

        async def lane() -> None:
            for i, (body, headers) in queue:
                each[i] = (await http.post("/v1/charges", json=body, headers=headers)).status_code

        await asyncio.gather(*(lane() for _ in range(c)))
    statuses: dict = {s: each.count(s) for s in set(each)}
    statuses["each"] = each
    return statuses


def grind(side: Side, cluster: GrindCluster, args: argparse.Namespace, pattern: str) -> dict:
    """One run under callgrind, start to stop: the warm-up, then ``args.charges`` charges
    of ``pattern`` (none for "none"). The instructions the server's processes, the
    backends serving clients and PostgreSQL's own processes counted."""
    run = cluster.counts / uuid.uuid4().hex[:8]
    run.mkdir()
    shutil.chown(run, "postgres", "postgres")
    side.server.command = [*GRIND, f"--callgrind-out-file={run}/server.%p", *side.cli]
    cluster.start_grinding(run)
    side.server.start()
    try:
        warm = [(f"bench_{i}", "") for i in range(USERS)]
        warm += [(f"lim_{i}", side.member) for i in range(LIMIT_USERS)]
        warm_up = [
            ({"user_id": u, "skill": SKILL} | ({"member": m} if m else {}), {}) for u, m in warm
        ]
        # A 503 here is a connection that took longer than its timeout to open under
        # callgrind: that charge is made again, and only that one, so that the runs
        # differ by little more than their charges (their warm-ups' 503s are logged).
        failed = 0
        for _ in range(5):
            statuses = asyncio.run(
                charge_all(side.server.url, side.token, warm_up, args.concurrency)
            )
            each = statuses["each"]
            failed += sum(status != 201 for status in each)
            warm_up = [c for c, status in zip(warm_up, each, strict=True) if status != 201]
            if not warm_up:
                break
        assert not warm_up, statuses
        if pattern != "none":
            charges = bodies(pattern, side.member, args.charges, seed=args.charges)
            statuses = asyncio.run(
                charge_all(side.server.url, side.token, charges, args.concurrency)
            )
            assert set(statuses["each"]) == {201}, statuses
        own = asyncio.run(background(f"{cluster.url}/postgres"))
        own.add(int(Path(cluster.data, "postmaster.pid").read_text().split()[0]))
    finally:
        side.server.stop()
        cluster.stop()
    pg = totals(list(run.glob("pg.*")))
    log(f"{side.label} {pattern}: {failed} warm-up charges answered other than 201")
    return {
        "server": sum(totals(list(run.glob("server.*"))).values()),
        "backends": sum(v for p, v in pg.items() if p not in own),
        "postgres_own": sum(v for p, v in pg.items() if p in own),
    }


def measure(side: Side, cluster: GrindCluster, args: argparse.Namespace) -> dict:
    """Per pattern: instructions per charge of each part, the run with the pattern's
    charges less the run without them."""
    side.server.startup_seconds = 600
    # Two connections each pool, both open after the warm-up: a connection opened later
    # would count its start (catalogue caches, plans) in the charges. At callgrind's
    # pace a request waits at most a few charges' time for one, well within the pool's
    # timeout; and Redis has the time it needs, so the cache never gives it up.
    side.server.env |= {
        "DB_POOL_SIZE": "2",
        "DB_FAST_POOL_SIZE": "2",
        "REDIS_TIMEOUT": "30",
        "PYTHONHASHSEED": "0",
    }
    first = grind(side, cluster, args, "none")
    log(f"{side.label} without the charges: {first}")
    # the same run again: how far two runs without charges differ, per charge
    again = grind(side, cluster, args, "none")
    log(f"{side.label} without the charges, again: {again}")
    base = {part: (first[part] + again[part]) / 2 for part in first}
    result = {"(noise)": {part: (again[part] - first[part]) / args.charges for part in base}}
    for pattern in args.patterns:
        counted = grind(side, cluster, args, pattern)
        result[pattern] = {part: (counted[part] - base[part]) / args.charges for part in base}
        log(f"{side.label} {pattern}: {counted}; per charge {result[pattern]}")
    return result


def run_side(label: str, checkout: Path, args: argparse.Namespace) -> dict:
    cluster = GrindCluster()
    cluster.init()
    cluster.start()
    try:
        side = Side(label, checkout, uuid.uuid4().hex[:8], 1, pg=cluster.url)
        side.start(commit_wait=True)
        asyncio.run(side.seed(USERS, ("spread", *args.patterns), limit_users=LIMIT_USERS))
        side.server.stop()
        cluster.stop()
        log(f"{label}: {side.checkout} seeded; now under callgrind")
        return measure(side, cluster, args)
    finally:
        cluster.cleanup()


def main() -> None:
    parser = checkouts_parser(__doc__)
    parser.add_argument("--charges", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    args = parser.parse_args()
    args.patterns = tuple(p for p in PATTERNS if p in args.patterns.split(","))
    results = {label: run_side(label, path, args) for label, path in (("A", args.a), ("B", args.b))}
    print(
        f"\n{args.charges} charges per pattern at c={args.concurrency}, 1 worker;"
        " instructions per charge (callgrind's Ir)\n"
    )
    print("| pattern | counted in | A | B | B ÷ A |")
    print("|---|---|---:|---:|---:|")
    for pattern in ("(noise)", *args.patterns):
        a, b = results["A"][pattern], results["B"][pattern]
        if pattern == "(noise)":
            for part in a:
                print(f"| none, twice | {part} | {a[part]:+,.0f} | {b[part]:+,.0f} | |")
            continue
        for part in ("server", "backends", "postgres_own"):
            ratio = b[part] / a[part]
            print(f"| {pattern} | {part} | {a[part]:,.0f} | {b[part]:,.0f} | {ratio:.3f} |")
        a_all, b_all = (sum(x.values()) for x in (a, b))
        print(f"| {pattern} | **all** | {a_all:,.0f} | {b_all:,.0f} | **{b_all / a_all:.3f}** |")


if __name__ == "__main__":
    main()
