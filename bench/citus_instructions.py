"""Instructions per charge on each node of a Citus cluster (docs/citus.md, BENCHMARKS.md),
counted by valgrind's callgrind: what a charge costs the coordinator that delegates it and
the worker that runs it.

On the cluster scripts/citus-cluster.sh started (a coordinator and two workers): a database
of its own, migrated and seeded with USERS users (a purchase each, then each charged once so
that each has its head) and an API key. Then, twice, every node is restarted with its
postmaster under callgrind (each process it forks counted apart), ``n`` charges are made one
after another on the coordinator, as the service calls them (``SELECT … FROM sc_charge(…)``:
delegated to the user's worker; users at random over both workers, half keyed), and the
nodes stop, which writes the counts. A node's count is the sum over the sessions that
served the charges (the charges' own on the coordinator, those Citus opened from it on the
workers; the node's own processes, which work by the clock, left out: the postmaster, the
checkpointer, Citus's maintenance daemon, autovacuum ...), and per charge = (its count at
MANY charges − at FEW) ÷ (MANY − FEW), so that opening the sessions cancels out. Finally
the nodes restart as before.

    make citus; uv run --group bench python bench/citus_instructions.py [--few 100] [--many 500]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import create_citus_database, drop_databases  # noqa: E402

from bench.citus import CITUS  # noqa: E402
from bench.phases import log  # noqa: E402
from skill_credits.migrate import migrate  # noqa: E402
from skill_credits.settings import Settings  # noqa: E402

BASE = Path(os.environ.get("CITUS_BASE", "/tmp/citus"))  # noqa: S108 - scripts/citus-cluster.sh's
NODES = {"coordinator": "c", "worker 1": "w1", "worker 2": "w2"}
PORTS = {"coordinator": 9700, "worker 1": 9701, "worker 2": 9702}
OWNER = "postgres"
USERS = 200


def pg_bin() -> Path:
    found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
    return Path(found.stdout.strip())


def as_owner(*argv: str, check: bool = True) -> None:
    subprocess.run(["runuser", "-u", OWNER, "--", *argv], check=check, capture_output=True)


def restart(counting: Path | None) -> None:
    """Every node stopped, then started again: under callgrind (each node's counts in its
    own folder of ``counting``) or as usual."""
    for node in NODES.values():
        stop = [str(pg_bin() / "pg_ctl"), "-D", str(BASE / node), "-m", "fast", "-w", "-t", "600"]
        as_owner(*stop, "stop", check=False)  # a node that is not running stays so
    for node in NODES.values():
        start = [str(pg_bin() / "pg_ctl"), "-D", str(BASE / node), "-l", str(BASE / f"{node}.log")]
        if counting is not None:
            out = counting / node
            out.mkdir(parents=True)
            wrapper = out / "postgres"
            wrapper.write_text(
                "#!/bin/sh\nexec valgrind --tool=callgrind --dump-instr=no"
                f' --callgrind-out-file={out}/callgrind.%p {pg_bin() / "postgres"} "$@"\n'
            )
            wrapper.chmod(0o755)
            shutil.chown(out, OWNER)
            start += ["-p", str(wrapper)]
        as_owner(*start, "-w", "-t", "600", "start")


async def sessions(port: int, database: str) -> set[int]:
    """The pids of the sessions open on a node's database: the charges' own on the
    coordinator, and those Citus opened from it on the workers (the node's own processes,
    which work by the clock and not by the charges, are not among them)."""
    conn = await asyncpg.connect(f"postgresql://{OWNER}@127.0.0.1:{port}/{database}", timeout=120)
    try:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend'"
            " AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        return {row["pid"] for row in rows}
    finally:
        await conn.close()


def counted(counting: Path, only: dict[str, set[int]]) -> dict[str, int]:
    """Each node's instructions: the sum over the sessions ``only`` names."""
    totals = {}
    for name, node in NODES.items():
        total = 0
        for path in (counting / node).glob("callgrind.*"):
            if int(path.name.split(".")[-1]) not in only[name]:
                continue
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(("summary:", "totals:")):
                    total += int(line.split()[1])
                    break
        totals[name] = total
    return totals


async def seed(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("INSERT INTO skills (name, display_name, cost) VALUES ('S', 'S', 1)")
        await conn.execute(
            "INSERT INTO api_keys (id, name, role, key_hash) VALUES ('kid', 'b', 'service', 'x')"
        )
        for n in range(1, USERS + 1):
            await conn.execute(
                "SELECT o.outcome FROM sc_credit($1, 'PURCHASE', 1000000000, NULL, NULL, NULL,"
                " NULL, NULL, NULL) o",
                f"u{n}",
            )
        await charges(conn, USERS, first=True)
    finally:
        await conn.close()


async def charges(conn: asyncpg.Connection, n: int, first: bool = False) -> None:
    rng, prefix = random.Random(n), uuid.uuid4().hex[:8]
    for i in range(n):
        user = f"u{i + 1}" if first else f"u{rng.randint(1, USERS)}"
        key, digest = (f"{prefix}-{i}", b"\x01") if i % 2 else (None, None)
        outcome = await conn.fetchval(
            "SELECT o.outcome FROM sc_charge($1, 'S', NULL, 1, NULL, $2, $3, 'kid', NULL, false) o",
            user,
            key,
            digest,
        )
        assert outcome == "written", outcome


async def run(url: str, database: str, n: int) -> dict[str, set[int]]:
    """``n`` charges on one session; the sessions that served them, by node."""
    conn = await asyncpg.connect(url, timeout=120, command_timeout=120)
    try:
        await charges(conn, n)
        return {name: await sessions(PORTS[name], database) for name in NODES}
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--few", type=int, default=100)
    parser.add_argument("--many", type=int, default=500)
    args = parser.parse_args()
    name = f"sc_bench_cins_{uuid.uuid4().hex[:6]}"
    url = f"{CITUS}/{name}"
    work = Path(tempfile.mkdtemp(prefix="sc-cins-"))
    shutil.chown(work, OWNER)
    try:
        asyncio.run(create_citus_database(CITUS, name))
        migrate(Settings(database_url=url))
        log(f"seeding {USERS} users")
        asyncio.run(seed(url))
        counts = {}
        for n in (args.few, args.many):
            counting = work / str(n)
            counting.mkdir()
            shutil.chown(counting, OWNER)
            log(f"{n} charges with every node under callgrind")
            restart(counting)
            served = asyncio.run(run(url, name, n))
            restart(None)
            counts[n] = counted(counting, served)
            log(f"  {counts[n]}")
        print("\n| node | instructions per charge |\n|---|---:|")
        for node in NODES:
            per = (counts[args.many][node] - counts[args.few][node]) / (args.many - args.few)
            print(f"| {node} | {per:,.0f} |")
    finally:
        if not all((BASE / node / "postmaster.pid").exists() for node in NODES.values()):
            restart(None)
        asyncio.run(drop_databases(CITUS, name))
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
