"""Usage on a big log (docs/usage.md): GET /v1/usage and the admin page against a log of
--rows transactions (10 million) across --users users (100 000) and 50 skills over the
last 100 days, through `skill-credits serve` (one worker), on this machine's PostgreSQL.

The log is written straight into a database of its own, in time order as a ledger writes
it: charges of 1-5 units of a skill each, one in fifty refunded by the next row, one in
five by a member, users drawn with a long tail (the busiest hundredth of them make about a
fifth of the charges), each user's credits in one grant, paid for two users in three and
promotional for the third. Then the rollups are built by the same step the worker runs
(timed), and each request is made --repeat times after a warm-up; p50 and p95 in ms.

    uv run --group bench python bench/usage.py [--rows 10000000] [--users 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.databases import (  # noqa: E402
    connection,
    create_keys,
    delete_prefix,
    drop_databases,
    execute,
)
from tests.support.processes import AppServer  # noqa: E402

from bench.databases import PG, REDIS_URL  # noqa: E402
from bench.phases import log  # noqa: E402
from skill_credits.db import Database  # noqa: E402
from skill_credits.migrate import migrate  # noqa: E402
from skill_credits.settings import Settings  # noqa: E402
from skill_credits.usage import service as usage_service  # noqa: E402

SKILLS = 50
DAYS = 100
CHUNK = 1_000_000


def seed(url: str, rows: int, users: int, start: datetime) -> None:
    step = DAYS * 86400 / rows  # seconds between two rows
    commands = [
        f"INSERT INTO skills (name, display_name, cost) SELECT 'USAGE_' || k, 'Usage ' || k, k"
        f" FROM generate_series(1, {SKILLS}) k",
        f"INSERT INTO users (user_id, credits) SELECT 'u' || g, 1000000000000"
        f" FROM generate_series(0, {users - 1}) g",
        "INSERT INTO grants (id, user_id, category, amount, remaining, status)"
        " SELECT md5('g' || g)::uuid, 'u' || g,"
        " CASE WHEN g % 3 = 0 THEN 'promotional' ELSE 'paid' END,"
        f" 1000000000000, 1000000000000, 'active' FROM generate_series(0, {users - 1}) g",
    ]
    for first in range(1, rows + 1, CHUNK):
        last = min(rows, first + CHUNK - 1)
        # row n: a charge of row n's draw, or (n % 50 = 1) the refund of row n - 1
        commands.append(
            "INSERT INTO transactions (seq, id, user_id, type, amount, balance_after, skill_id,"
            " skill, units, unit_cost, refund_of, sources, member, created_at)"
            " SELECT q.n, md5('t' || q.n)::uuid, 'u' || x.u,"
            " CASE WHEN q.refund THEN 'REFUND' ELSE 'CONSUMPTION' END,"
            " CASE WHEN q.refund THEN x.units * s.cost ELSE -x.units * s.cost END,"
            " 1000000000000,"
            " CASE WHEN q.refund THEN NULL ELSE s.id END, CASE WHEN q.refund THEN NULL"
            " ELSE s.name END, CASE WHEN q.refund THEN NULL ELSE x.units END,"
            " CASE WHEN q.refund THEN NULL ELSE s.cost END,"
            " CASE WHEN q.refund THEN md5('t' || q.base)::uuid END,"
            " jsonb_build_array(jsonb_build_object('grant_id', md5('g' || x.u)::uuid::text,"
            " 'amount', x.units * s.cost)),"
            " CASE WHEN NOT q.refund AND q.base % 5 = 0 THEN 'm' || (x.u % 7) END,"
            f" TIMESTAMPTZ '{start.isoformat()}' + q.n * interval '{step} seconds'"
            " FROM (SELECT n, n % 50 = 1 AS refund, CASE WHEN n % 50 = 1 THEN n - 1 ELSE n END"
            f"       AS base FROM generate_series({first}, {last}) n) q"
            " CROSS JOIN LATERAL (SELECT"
            f"   floor({users} * power((hashint8(q.base) & 2147483647) / 2147483647.0, 3))::int"
            "     AS u,"
            f"   (hashint8(q.base * 7) & 2147483647) % {SKILLS} + 1 AS sk,"
            "   (hashint8(q.base * 13) & 2147483647) % 5 + 1 AS units) x"
            " JOIN skills s ON s.name = 'USAGE_' || x.sk"
            " ORDER BY q.n"
        )
    commands.append("VACUUM ANALYZE")  # as autovacuum would have: the block ranges summarized
    chunks = 0
    for command in commands:
        # a bulk load whose keys are right by construction: no key checks, row by row
        asyncio.run(execute(url, "SET session_replication_role = replica", command))
        if command.startswith("INSERT INTO transactions"):
            chunks += 1
            log(f"seeded {min(rows, chunks * CHUNK)} rows")


async def roll(url: str) -> float:
    db = Database(Settings(database_url=url, db_command_timeout=3600))
    await db.start()
    try:
        started = time.monotonic()
        await usage_service.roll(db)
        return time.monotonic() - started
    finally:
        await db.dispose()


def timed(client: httpx.Client, path: str, params: dict, headers: dict, repeat: int) -> dict:
    """p50 and p95 of ``repeat`` requests after a warm-up; or, for a request that fails, its
    status and how long it took (a slow one is not repeated)."""
    for _ in range(2):  # warm-up: the worker's pools, PostgreSQL's caches
        began = time.perf_counter()
        r = client.get(path, params=params, headers=headers)
        took = (time.perf_counter() - began) * 1000
        if r.status_code != 200:
            return {"status": r.status_code, "ms": took, "detail": r.text[:200]}
        if took > 5000:
            return {"status": 200, "ms": took, "bytes": len(r.content), "once": True}
    ms = []
    for _ in range(repeat):
        began = time.perf_counter()
        r = client.get(path, params=params, headers=headers)
        ms.append((time.perf_counter() - began) * 1000)
        assert r.status_code == 200, r.text
    ms.sort()
    return {
        "p50": statistics.median(ms),
        "p95": ms[max(0, round(0.95 * len(ms)) - 1)],
        "bytes": len(r.content),
        "items": len(r.json()["items"]) if path == "/v1/usage" else None,
    }


def log_in(client: httpx.Client, token: str) -> None:
    client.get("/admin/login")
    csrf = {"x-csrftoken": client.cookies.get("sc_csrf", path="/admin")}
    r = client.post("/admin/login", data={"api_key": token}, headers=csrf)
    assert r.status_code in (200, 303), r.text


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "usage.json"))
    parser.add_argument(
        "--keep", action="store_true", help="keep the database (its name is logged)"
    )
    args = parser.parse_args()
    name = f"sc_bench_usage_{uuid.uuid4().hex[:6]}"
    url = f"{PG}/{name}"
    now = datetime.now(UTC)
    try:
        migrate(Settings(database_url=url))
        log(f"seeding {args.rows} rows, {args.users} users, {SKILLS} skills")
        started = time.monotonic()
        seed(url, args.rows, args.users, now - timedelta(days=DAYS))
        seeded = time.monotonic() - started

        async def size() -> int:
            async with connection(url) as conn:
                return await conn.fetchval("SELECT pg_database_size(current_database())")

        log_mb = asyncio.run(size()) / 2**20
        log("rolling the log up (the worker's step, from nothing)")
        rolled = asyncio.run(roll(url))
        admin, service = asyncio.run(create_keys(url, "admin", "service"))
        env = {"DATABASE_URL": url, "REDIS_URL": REDIS_URL, "REDIS_PREFIX": f"{name}:"}
        to = datetime.now(UTC)
        ninety = {"from": (to - timedelta(days=90)).isoformat(), "to": to.isoformat()}
        results = {}
        with (
            AppServer(env, workers=1, quiet=True) as server,
            httpx.Client(base_url=server.url, timeout=120) as client,
        ):
            auth = {"Authorization": f"Bearer {service}"}
            for label, params in (
                ("90 days by day, by skill", ninety | {"group_by": "skill"}),
                ("90 days by day, by category", ninety | {"group_by": "category"}),
                ("90 days by day, by user", ninety | {"group_by": "user"}),
                ("90 days by month, by user", ninety | {"group_by": "user", "interval": "month"}),
                ("90 days by day, the busiest user, by skill", ninety | {"user_id": "u0"}),
                ("90 days by day, one member, by skill", ninety | {"member": "m3"}),
            ):
                log(label)
                results[label] = timed(client, "/v1/usage", params, auth, args.repeat)
                log(f"  {results[label]}")
            results["forecast of the busiest user"] = timed(
                client, "/v1/users/u0/forecast", {}, auth, args.repeat
            )
            log_in(client, admin)
            results["admin usage page (30 days)"] = timed(
                client, "/admin/usage", {}, {}, args.repeat
            )
            day = to.date()
            results["admin usage page (90 days)"] = timed(
                client,
                "/admin/usage",
                {"from": str(day - timedelta(days=89)), "to": str(day)},
                {},
                args.repeat,
            )
        report = {
            "rows": args.rows,
            "users": args.users,
            "skills": SKILLS,
            "database_mb": round(log_mb),
            "seeded_s": round(seeded, 1),
            "rolled_up_s": round(rolled, 1),
            "requests": results,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(json.dumps(report, indent=2))
        print("\n| request | p50 ms | p95 ms | items | bytes |\n|---|---:|---:|---:|---:|")
        for label, r in results.items():
            if "p50" not in r:
                print(f"| {label} | {r['status']} after {r['ms']:.0f} ms (once) | | | |")
                continue
            size = f"{r['bytes']:,}".replace(",", " ")
            print(f"| {label} | {r['p50']:.0f} | {r['p95']:.0f} | {r['items'] or ''} | {size} |")
    finally:
        delete_prefix(REDIS_URL, f"{name}:")  # the admin session the run logged in with
        if args.keep:
            log(f"kept {url}")
        else:
            asyncio.run(drop_databases(PG, name))


if __name__ == "__main__":
    main()
