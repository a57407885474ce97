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

    uv run --group bench python bench/ab.py --a ../old-checkout --b . [--rounds 6]
        [--patterns spread,limits]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import delete_prefix, drop_databases  # noqa: E402
from tests.support.processes import AppServer  # noqa: E402

from bench.databases import PG, REDIS_URL, SKILL, SPAN_SKILL, USERS  # noqa: E402
from bench.phases import charges, limited_charges, log, span_charges  # noqa: E402

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

    def __init__(self, label: str, checkout: Path, run: str, workers: int) -> None:
        self.label, self.checkout = label, checkout.resolve()
        self.cli = [str(self.checkout / ".venv" / "bin" / "skill-credits")]
        self.database = f"sc_ab_{run}_{label.lower()}"
        self.env = {
            "DATABASE_URL": f"{PG}/{self.database}",
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

    def start(self) -> None:
        """Migrate its database, make its key, and serve."""
        self.cli_run("migrate")
        self.token = self.cli_run("keys", "create", "--role", "admin", "--name", "ab-admin")
        self.server.start()

    async def seed(self, users: int, patterns: tuple[str, ...]) -> None:
        """The bench's skill, ``users`` users and a hot one, each with a big PURCHASE, and
        the users of ``patterns``' own."""
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
            limited = [f"lim_{i}" for i in range(LIMIT_USERS if "limits" in patterns else 0)]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--a", type=Path, required=True, help="the checkout before the change")
    parser.add_argument("--b", type=Path, default=ROOT, help="the checkout after it")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--patterns", default=",".join(PATTERNS), help=f"some of {','.join(PATTERNS)}"
    )
    args = parser.parse_args()
    patterns = tuple(p for p in PATTERNS if p in args.patterns.split(","))
    run = uuid.uuid4().hex[:8]
    sides = [Side("A", args.a, run, args.workers), Side("B", args.b, run, args.workers)]
    rates = {s.label: {p: [] for p in patterns} for s in sides}
    try:
        for side in sides:
            side.start()
            asyncio.run(side.seed(USERS, patterns))
            log(f"{side.label}: {side.checkout} seeded ({USERS} users)")
        for round_ in range(args.rounds):
            order = sides if round_ % 2 == 0 else sides[::-1]
            for pattern in patterns:
                for side in order:
                    if pattern == "spans":
                        result = side.spans(args.seconds)
                    elif pattern == "limits":
                        result = limited_charges(
                            side.server.url, side.token, args.seconds, LIMIT_USERS, side.member
                        )
                    else:
                        result = charges(side.server.url, side.token, pattern, args.seconds)
                    bad = {s: n for s, n in result["statuses"].items() if s not in (201, 402)}
                    assert not bad, f"{side.label} answered {bad}"
                    rates[side.label][pattern].append(round(result["rate"]))
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
    print("| pattern | A median charges/s (rounds) | B median (rounds) | B ÷ A |")
    print("|---|---:|---:|---:|")
    for pattern in patterns:
        a, b = (statistics.median(rates[s][pattern]) for s in ("A", "B"))
        print(
            f"| {pattern} | {a:.0f} ({', '.join(map(str, rates['A'][pattern]))})"
            f" | {b:.0f} ({', '.join(map(str, rates['B'][pattern]))}) | {b / a:.2f} |"
        )


if __name__ == "__main__":
    main()
