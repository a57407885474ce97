"""Instructions per charge in PostgreSQL alone, checkout A against checkout B: a precise
count of what a change to the ledger's SQL costs the database, in two minutes.

bench/instructions.py counts the whole service (the worker, the backends, PostgreSQL's own
processes) and takes about forty minutes. This counts one backend only: a cluster of its
own with one database per checkout, each migrated by that checkout's own CLI and seeded by
the ledger's functions (300 users without limits, 300 with a day limit for everyone and
an hour limit of the member "ann", an API key, every user charged once so that each has
its head); then the cluster stops, and PostgreSQL's single-user mode runs N charges under
callgrind, read from a script: users at random, half keyed with fresh keys, the API key
checked, as the service calls ``sc_charge``. Per charge = (count at 1 200 charges − count
at 200) ÷ 1 000, so the backend's start and stop cancel out. Counts repeat to within a
few thousand instructions run after run, whatever else the machine does.

Patterns: "spread" (users without limits), "limits" (a day limit for everyone and an hour
limit of the charging member), "rule" (an auto-recharge rule, the balance far above its
threshold) and "rule-capped" (a rule whose threshold the balance is below, this month's cap
reached: the worst case, every charge runs the trigger's function and asks nothing). On a
checkout without auto-recharge, "rule" and "rule-capped" charge the same users without one.

    uv run --group bench python bench/backend_instructions.py --a ../old-checkout --b .
        [--rounds 2] [--patterns spread,limits,rule,rule-capped]
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import execute  # noqa: E402
from tests.support.processes import PostgresCluster  # noqa: E402

from bench.ab import checkouts_parser  # noqa: E402
from bench.phases import log  # noqa: E402

USERS = 300
PATTERNS = ("spread", "limits", "rule", "rule-capped")
# the users each pattern charges, and how (member, whether the user has limits)
WHO = {
    "spread": ("u", "NULL, false"),
    "limits": ("l", "'ann', true"),
    "rule": ("r", "NULL, false"),
    "rule-capped": ("c", "NULL, false"),
}
FEW, MANY = 200, 1200


def seed_statements() -> list[str]:
    credit = "sc_credit({who} || g, 'PURCHASE', 1000000000, NULL, NULL, NULL, NULL, NULL, NULL)"
    return [
        "INSERT INTO skills (name, display_name, cost) VALUES ('S', 'S', 1)",
        "INSERT INTO api_keys (id, name, role, key_hash) VALUES ('kid', 'bench', 'service', 'x')",
        f"SELECT count({credit.format(who=repr('u'))}) FROM generate_series(1, {USERS}) g",
        f"SELECT count({credit.format(who=repr('l'))}) FROM generate_series(1, {USERS}) g",
        f"SELECT count(*) FROM generate_series(1, {USERS}) g,"
        " sc_limit_create('l' || g, NULL, NULL, 'day', 1000000000)",
        f"SELECT count(*) FROM generate_series(1, {USERS}) g,"
        " sc_limit_create('l' || g, 'ann', NULL, 'hour', 1000000000)",
        f"SELECT count({credit.format(who=repr('r'))}) FROM generate_series(1, {USERS}) g",
        f"SELECT count({credit.format(who=repr('c'))}) FROM generate_series(1, {USERS}) g",
        # where the checkout has auto-recharge: the r users' rules never ask; the c users'
        # asked once (set while below), were fulfilled, and their cap of 1 is reached
        f"""DO $$ BEGIN
            IF to_regproc('sc_recharge_set') IS NOT NULL THEN
                PERFORM sc_recharge_set('r' || g, 0, 1000, NULL, 'paid', 50, NULL)
                FROM generate_series(1, {USERS}) g;
                PERFORM sc_recharge_set('c' || g, 2000000000, 1, 1, 'paid', 50, NULL)
                FROM generate_series(1, {USERS}) g;
                PERFORM sc_recharge_fulfil(q.user_id, q.id, NULL)
                FROM recharges q WHERE q.status = 'pending';
            END IF;
        END $$""",
        # every user charged once: the first charge makes the head
        *(
            f"SELECT count(sc_charge('{who}' || g, 'S', NULL, 1, NULL, NULL, NULL, 'kid',"
            f" NULL, false)) FROM generate_series(1, {USERS}) g"
            for who in "urc"
        ),
        "SELECT count(sc_charge('l' || g, 'S', NULL, 1, NULL, NULL, NULL, 'kid', 'ann', true))"
        f" FROM generate_series(1, {USERS}) g",
    ]


def script(charges: int, pattern: str) -> str:
    """``charges`` calls of sc_charge as the service makes them, one per line."""
    rng, prefix = random.Random(1), uuid.uuid4().hex[:8]
    who, tail = WHO[pattern]
    lines = []
    for i in range(charges):
        key, digest = (f"'{prefix}-{i}'", "'\\x01'::bytea") if i % 2 else ("NULL", "NULL")
        user = f"{who}{rng.randint(1, USERS)}"
        lines.append(
            f"SELECT (sc_charge('{user}', 'S', NULL, 1, NULL, {key}, {digest}, 'kid',"
            f" {tail})).outcome;"
        )
    return "\n".join(lines) + "\n"


def counted(cluster: PostgresCluster, database: str, charges: int, pattern: str) -> int:
    """Instructions of one single-user backend that makes ``charges`` charges."""
    with tempfile.TemporaryDirectory(dir=cluster.dir) as work:
        if cluster.as_postgres:  # the backend runs as postgres and writes its count here
            shutil.chown(work, "postgres", "postgres")
        path, out = Path(work, "charges.sql"), Path(work, "callgrind.out")
        path.write_text(script(charges, pattern))
        os.chmod(path, 0o644)
        cmd = [
            "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
            str(cluster.bin / "postgres"), "--single", "-D", cluster.data,
            "-c", "synchronous_commit=off", database,
        ]  # fmt: skip
        if cluster.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        with path.open() as stdin:
            answer = subprocess.run(cmd, stdin=stdin, capture_output=True, text=True, check=True)
        written = answer.stdout.count("written")
        if written != charges:
            raise RuntimeError(f"{database}: {written} of {charges} charges written")
        totals = [line for line in out.read_text().splitlines() if line.startswith("summary:")]
        return int(totals[0].split()[1])


def main() -> None:
    parser = checkouts_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--patterns", default=",".join(PATTERNS))
    args = parser.parse_args()
    patterns = [p for p in PATTERNS if p in args.patterns.split(",")]
    sides = {"A": args.a.resolve(), "B": args.b.resolve()}
    cluster = PostgresCluster()
    cluster.init()
    cluster.start()
    try:
        for label, checkout in sides.items():
            database = f"sc_bi_{label.lower()}"
            asyncio.run(execute(f"{cluster.url}/postgres", f"CREATE DATABASE {database}"))
            env = {**os.environ, "DATABASE_URL": f"{cluster.url}/{database}"}
            cli = str(checkout / ".venv" / "bin" / "skill-credits")
            subprocess.run([cli, "migrate"], env=env, check=True, capture_output=True)
            asyncio.run(execute(f"{cluster.url}/{database}", *seed_statements()))
            log(f"{label}: {checkout} migrated and seeded")
        cluster.stop()
        per_charge: dict[tuple[str, str], list[int]] = {}
        for n in range(args.rounds):
            for label in sides if n % 2 == 0 else reversed(sides):
                for pattern in patterns:
                    database = f"sc_bi_{label.lower()}"
                    few = counted(cluster, database, FEW, pattern)
                    many = counted(cluster, database, MANY, pattern)
                    value = (many - few) // (MANY - FEW)
                    per_charge.setdefault((label, pattern), []).append(value)
                    log(f"round {n + 1}: {label} {pattern}: {value:,} instructions per charge")
    finally:
        cluster.cleanup()
    print("\n| pattern | A | B | B ÷ A |\n|---|---:|---:|---:|")
    for pattern in patterns:
        a, b = per_charge[("A", pattern)], per_charge[("B", pattern)]
        mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
        print(
            f"| {pattern} | {mean_a:,.0f} ({', '.join(f'{x:,}' for x in a)})"
            f" | {mean_b:,.0f} ({', '.join(f'{x:,}' for x in b)}) | {mean_b / mean_a:.3f} |"
        )


if __name__ == "__main__":
    main()
