"""Two checkouts of skill-credits, A and B, under the same load in one run: did a change
make charges slower?

Each checkout runs as deployed (its own `.venv/bin/skill-credits serve`) on a database of
its own, migrated by its own code and seeded through its own HTTP API (so whatever a
release keeps beside a balance, grants included, is made the way users make it). Rounds
alternate A and B (B first every other round); the answer is the median charges/s of
each and their ratio, per load pattern: 10 000 users at random ("spread"), one user
("hot"), and users with three grants each charged once at cost 2, so that each charge
spans the first two ("spans"; on a checkout without grants, the same credits make one
balance), and users with two spend limits that apply to every charge, a day limit for
everyone and an hour limit of the member the charges name ("limits"; on a checkout
without limits, the same users without them, charged without a member). Nothing else is
compared: run it on a machine that is as quiet as it can be, and read the spread of the
rounds before the ratio.

Beside charges/s, each round measures what a charge cost: CPU of the server's processes
and of PostgreSQL's, and bytes of WAL, per charge. These vary far less than charges/s,
so they tell a cost of a few per cent that the rounds' spread hides. Where the disk's
flush is slow, charges/s measure the disk, not the code: ``--no-commit-wait`` sets
``synchronous_commit = off`` on both databases, so that the code's CPU is what limits
them (every charge still commits; only the wait for the flush is left out).

    uv run --group bench python bench/ab.py --a ../old-checkout --b . [--rounds 6]
        [--patterns spread,limits] [--no-commit-wait]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import delete_prefix, drop_databases, execute  # noqa: E402
from tests.support.processes import AppServer  # noqa: E402

from bench.databases import PG, REDIS_URL, SKILL, SPAN_SKILL, USERS  # noqa: E402
from bench.phases import (  # noqa: E402
    charges,
    cpu_seconds,
    limited_charges,
    log,
    span_charges,
)

BIG = 10**15
# Users with three grants, each charged once, so every charge spans the first two.
SPAN_USERS = 40_000
SPAN_GRANTS = (
    {"amount": 1, "type": "GRANT", "priority": 10},
    {"amount": BIG, "type": "PURCHASE", "priority": 20},
    {"amount": BIG, "type": "PURCHASE"},
)
# Users with a day limit and their member's hour limit, high enough never to refuse.
LIMIT_USERS = 10_000
MEMBER = "agent"
LIMITS = ({"window": "day", "max_credits": 2**53}, {"window": "hour", "max_credits": 2**53})
PATTERNS = ("spread", "hot", "spans", "limits")


class Side:
    """One checkout: its CLI, its database, its server."""

    def __init__(self, label: str, checkout: Path, run: str, workers: int, pg: str = PG) -> None:
        self.label, self.checkout = label, checkout.resolve()
        self.cli = [str(self.checkout / ".venv" / "bin" / "skill-credits")]
        self.database = f"sc_ab_{run}_{label.lower()}"
        self.env = {
            "DATABASE_URL": f"{pg}/{self.database}",
            "REDIS_URL": REDIS_URL,
            "REDIS_PREFIX": f"sc_ab_{run}_{label.lower()}:",
        }
        self.server = AppServer(self.env, workers, command=self.cli, cwd=self.checkout, quiet=True)
        self.token = ""
        self.span_from = 0  # the next span user each wrk thread charges
        self.member = ""  # the limit users' member ("" on a checkout without limits)

    def cli_run(self, *args: str) -> str:
        out = subprocess.run(
            [*self.cli, *args], env={**self.server.env}, capture_output=True, text=True, check=True
        )
        return out.stdout.strip().splitlines()[-1]

    def start(self, commit_wait: bool) -> None:
        """Migrate its database, make its key, and serve."""
        self.cli_run("migrate")
        if not commit_wait:
            off = f"ALTER DATABASE {self.database} SET synchronous_commit = off"
            asyncio.run(execute(f"{PG}/postgres", off))
        self.token = self.cli_run("keys", "create", "--role", "admin", "--name", "ab-admin")
        self.server.start()

    async def seed(
        self, users: int, patterns: tuple[str, ...], limit_users: int = LIMIT_USERS
    ) -> None:
        """The bench's skill, ``users`` users and a hot one, each with a big PURCHASE, and
        the users of ``patterns``' own (``limit_users`` of them for "limits")."""
        auth = {"Authorization": f"Bearer {self.token}"}
        async with httpx.AsyncClient(base_url=self.server.url, headers=auth, timeout=30) as http:
            body = {"name": SKILL, "display_name": "bench", "cost": 1}
            r = await http.post("/v1/admin/skills", json=body)
            assert r.status_code == 201, r.text
            span = {"name": SPAN_SKILL, "display_name": "bench span", "cost": 2}
            assert (await http.post("/v1/admin/skills", json=span)).status_code == 201
            names = [f"bench_{i}" for i in range(users)] + ["bench_hot"]
            purchase = {"amount": BIG, "type": "PURCHASE"}
            # a checkout without grants knows no priority: the same credits, one balance
            probe = await http.post("/v1/users/span_probe/credits", json=SPAN_GRANTS[0])
            grants = SPAN_GRANTS
            if probe.status_code == 400:
                grants = tuple({k: v for k, v in g.items() if k != "priority"} for g in grants)
            spans = SPAN_USERS if "spans" in patterns else 0
            credits = [(n, purchase) for n in names] + [
                (f"span_{i}", grant) for grant in grants for i in range(spans)
            ]
            for start in range(0, len(credits), 50):
                batch = credits[start : start + 50]
                answers = await asyncio.gather(
                    *(http.post(f"/v1/users/{n}/credits", json=body) for n, body in batch)
                )
                assert all(a.status_code == 201 for a in answers), answers[0].text
            limited = [f"lim_{i}" for i in range(limit_users if "limits" in patterns else 0)]
            await self._each(http, [(f"/v1/users/{n}/credits", purchase) for n in limited])
            probe = await http.post("/v1/users/bench_0/limits", json=LIMITS[0])
            if limited and probe.status_code == 201:
                self.member = MEMBER
                await self._each(
                    http,
                    [(f"/v1/users/{n}/limits", LIMITS[0]) for n in limited]
                    + [(f"/v1/users/{n}/limits", LIMITS[1] | {"member": MEMBER}) for n in limited],
                )
            # one charge each before any round: a user's first charge after an upgrade
            # may go a slower way once (a release's own warm-up, not its steady state)
            charge = {"skill": SKILL}
            member = {"member": self.member} if self.member else {}
            await self._each(
                http,
                [("/v1/charges", charge | {"user_id": n}) for n in names]
                + [("/v1/charges", charge | member | {"user_id": n}) for n in limited],
            )

    @staticmethod
    async def _each(http: httpx.AsyncClient, posts: list[tuple[str, dict]]) -> None:
        """Every POST of ``posts``, 50 at a time; each must be a 201."""
        for start in range(0, len(posts), 50):
            answers = await asyncio.gather(
                *(http.post(path, json=body) for path, body in posts[start : start + 50])
            )
            assert all(a.status_code == 201 for a in answers), answers[0].text

    def measured(self, load: Callable[[], dict]) -> dict:
        """``load``'s result, with what each of its 201s cost: CPU of this side's server
        and of PostgreSQL (µs), and WAL (bytes)."""
        server, postgres, wal = self.costs()
        result = load()
        after = self.costs()
        charged = max(result["statuses"].get(201, 0), 1)
        result["cost"] = {
            "server_us": (after[0] - server) / charged * 1e6,
            "postgres_us": (after[1] - postgres) / charged * 1e6,
            "wal_bytes": (after[2] - wal) / charged,
        }
        return result

    def costs(self) -> tuple[float, float, int]:
        async def lsn() -> int:
            conn = await asyncpg.connect(f"{PG}/postgres")
            try:
                return await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
            finally:
                await conn.close()

        wal = int(asyncio.run(lsn()))
        group = self.server.proc.pid  # started in a session of its own: its process group
        return cpu_seconds(group=group), cpu_seconds(command="postgres"), wal

    def spans(self, seconds: float) -> dict:
        """Charges of span users not charged before."""
        result = span_charges(self.server.url, self.token, seconds, SPAN_USERS, self.span_from)
        # each thread did at most all of them: no stretch starts where another run went
        self.span_from += result["requests"]
        return result

    async def spanned(self) -> str:
        """How many of the span users' charges drew from two grants (B's schema only)."""
        conn = await asyncpg.connect(f"{PG}/{self.database}")
        try:
            row = await conn.fetchrow(
                "SELECT count(*) FILTER (WHERE jsonb_array_length(sources) = 2) AS two,"
                " count(*) AS all FROM transactions WHERE skill = $1",
                SPAN_SKILL,
            )
        except asyncpg.UndefinedColumnError:
            return "no grants"
        finally:
            await conn.close()
        return f"{row['two']} of {row['all']} charges spanned two grants"


def load(side: Side, pattern: str, seconds: float) -> dict:
    """One round of ``pattern`` against ``side``: wrk's result."""
    if pattern == "spans":
        return side.spans(seconds)
    if pattern == "limits":
        return limited_charges(side.server.url, side.token, seconds, LIMIT_USERS, side.member)
    return charges(side.server.url, side.token, pattern, seconds)


def paired_ratios(a: list[float], b: list[float]) -> str:
    """The median of B ÷ A, round by round, and the lowest and highest of those."""
    ratios = sorted(y / x for x, y in zip(a, b, strict=True))
    return f"{statistics.median(ratios):.3f} ({ratios[0]:.2f}–{ratios[-1]:.2f})"


def checkouts_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments of a comparison of two checkouts: --a, and --b (this one)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the checkout before the change")
    parser.add_argument("--b", type=Path, default=ROOT, help="the checkout after it")
    return parser


def main() -> None:
    parser = checkouts_parser(__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--patterns", default=",".join(PATTERNS), help=f"some of {','.join(PATTERNS)}"
    )
    parser.add_argument(
        "--no-commit-wait",
        dest="commit_wait",
        action="store_false",
        help="synchronous_commit = off on both databases: measure the code, not the disk",
    )
    args = parser.parse_args()
    patterns = tuple(p for p in PATTERNS if p in args.patterns.split(","))
    run = uuid.uuid4().hex[:8]
    sides = [Side("A", args.a, run, args.workers), Side("B", args.b, run, args.workers)]
    rates = {s.label: {p: [] for p in patterns} for s in sides}
    costs = {s.label: {p: [] for p in patterns} for s in sides}
    try:
        for side in sides:
            side.start(args.commit_wait)
            asyncio.run(side.seed(USERS, patterns))
            log(f"{side.label}: {side.checkout} seeded ({USERS} users)")
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for pattern in patterns:
                for side in order:
                    result = side.measured(partial(load, side, pattern, args.seconds))
                    bad = {s: n for s, n in result["statuses"].items() if s not in (201, 402)}
                    assert not bad, f"{side.label} answered {bad}"
                    rates[side.label][pattern].append(round(result["rate"]))
                    costs[side.label][pattern].append(result["cost"])
            log(f"round {round_ + 1}/{args.rounds}: {json.dumps(rates)}")
        for side in sides:
            if "spans" in patterns:
                log(f"{side.label}: {asyncio.run(side.spanned())}")
            if "limits" in patterns:
                log(f"{side.label}: limit users' member {side.member or '(none: no limits)'}")
    finally:
        for side in sides:
            side.server.stop()
        asyncio.run(drop_databases(PG, *(s.database for s in sides)))
        for side in sides:
            delete_prefix(REDIS_URL, side.env["REDIS_PREFIX"])
    commit = "" if args.commit_wait else ", synchronous_commit = off"
    print(f"{args.rounds} rounds of {args.seconds:g} s, {args.workers} worker(s){commit}\n")
    print(
        "| pattern | A median charges/s (rounds) | B median (rounds) | B ÷ A"
        " | B ÷ A round by round: median (range) |"
    )
    print("|---|---:|---:|---:|---:|")
    for pattern in patterns:
        a, b = (statistics.median(rates[s][pattern]) for s in ("A", "B"))
        print(
            f"| {pattern} | {a:.0f} ({', '.join(map(str, rates['A'][pattern]))})"
            f" | {b:.0f} ({', '.join(map(str, rates['B'][pattern]))}) | {b / a:.2f}"
            f" | {paired_ratios(rates['A'][pattern], rates['B'][pattern])} |"
        )
    print("\nPer charge, median of the rounds (B ÷ A, round by round: median (range)):\n")
    print("| pattern | cost | A | B | B ÷ A |")
    print("|---|---|---:|---:|---:|")
    for pattern in patterns:
        for cost, unit in (("server_us", "µs"), ("postgres_us", "µs"), ("wal_bytes", "B")):
            a, b = ([c[cost] for c in costs[s][pattern]] for s in ("A", "B"))
            print(
                f"| {pattern} | {cost.rsplit('_', 1)[0]} | {statistics.median(a):.0f} {unit}"
                f" | {statistics.median(b):.0f} {unit} | {paired_ratios(a, b)} |"
            )


if __name__ == "__main__":
    main()
