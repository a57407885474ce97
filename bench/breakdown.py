"""Where a charge's CPU goes: each app driven in-process, one request at a time.

No HTTP server and no load generator: every request goes straight into the ASGI app
(on uvloop, like `serve`), and the figure is this process's CPU time per request, so
PostgreSQL, Redis and `wrk` do not blur it. Each step adds one piece to the last:

1. an empty Litestar handler (the framework's floor);
2. the ceiling: that handler running the charge statement on asyncpg (adds to 1);
3. the ceiling with one Redis HGET of the skill's cache entry per charge (adds to 2);
4. skill-credits answering a charge without I/O (its service call, which reads the cache
   and takes the connection, replaced by a fixed answer): middleware, API-key check,
   strict body, metrics, the response (adds to 1);
5. skill-credits as deployed: its service call (adds to 4).

Each figure is the median of three app starts.

Each step runs twice: one request at a time (no overlap hides a cost), and 32 at a time
as at the benchmark's c=32, where concurrent work overlaps in the event loop. Either way
a worker reads its skill from Redis about once a second (cache.py).

    uv run --group bench python bench/breakdown.py [--json OUT]   (`make bench` runs it)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import json
import os
import random
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import uvloop
from litestar import Litestar, Request, Response, post

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

REQUESTS = 5000
WARMUP = 500
# as under `serve`: the metrics in multiprocess mode (set before anything imports them)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="sc_bench_metrics_"))


def _scope(body: bytes, token: str, key: str | None) -> dict:
    headers = [
        (b"host", b"bench"),
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"authorization", f"Bearer {token}".encode()),
    ]
    if key is not None:
        headers.append((b"idempotency-key", key.encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/charges",
        "raw_path": b"/v1/charges",
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }


async def _request(app, token: str, key: str | None, users: int, skill: str) -> int:
    body = b'{"user_id":"bench_%d","skill":"%s"}' % (random.randrange(users), skill.encode())
    pending = [{"type": "http.request", "body": body, "more_body": False}]
    status = []

    async def receive() -> dict:
        if pending:
            return pending.pop()
        await asyncio.sleep(3600)  # the app never asks twice for a complete body
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        if message["type"] == "http.response.start":
            status.append(message["status"])

    await app(_scope(body, token, key), receive, send)
    return status[0]


async def _cpu_per_request(
    app, token: str, users: int, skill: str, concurrency: int = 1
) -> tuple[float, dict]:
    run = uuid.uuid4().hex[:6]
    statuses: dict[int, int] = {}
    each = REQUESTS // concurrency

    async def requests(n: int, tag: str, count: bool) -> None:
        for i in range(n):
            code = await _request(app, token, f"{tag}{run}-{i}" if i % 2 else None, users, skill)
            if count:
                statuses[code] = statuses.get(code, 0) + 1

    async with app.lifespan():
        await asyncio.gather(
            *(requests(WARMUP // concurrency, f"w{j}_", False) for j in range(concurrency))
        )
        started = time.process_time()
        await asyncio.gather(*(requests(each, f"m{j}_", True) for j in range(concurrency)))
        spent = time.process_time() - started
    return spent / (each * concurrency) * 1e6, statuses


@post("/v1/charges")
async def _empty_charge(request: Request) -> Response:
    await request.body()
    return Response(b"{}", status_code=201, media_type="application/json")


def _empty_app() -> Litestar:
    return Litestar(route_handlers=[_empty_charge], openapi_config=None)


def measure(db_url: str, redis_url: str, prefix: str, token: str, users: int, skill: str) -> list:
    """CPU microseconds per charge for the five steps at 1 and 32 concurrent requests."""
    from bench.databases import skill_cache_key
    from skill_credits.app import create_app
    from skill_credits.ledger import service
    from skill_credits.observability import configure_logging
    from skill_credits.settings import Settings

    os.environ |= {
        "DATABASE_URL": db_url,
        "BENCH_KEY_ID": token.split("_")[1],
        "CEILING_REDIS_URL": redis_url,
        "CEILING_REDIS_KEY": asyncio.run(skill_cache_key(db_url, prefix, skill)),
    }

    def ceiling(with_redis: bool):
        if not with_redis:
            os.environ.pop("CEILING_REDIS_URL")
        try:
            return importlib.import_module("bench.ceiling_app").create_app()
        finally:
            os.environ["CEILING_REDIS_URL"] = redis_url

    def skill_credits():
        return create_app(Settings(database_url=db_url, redis_url=redis_url, redis_prefix=prefix))

    fixed = _fixed_answer(service, skill)

    async def no_io(*_, **__) -> service.Written:
        return fixed

    # each step, and the step it adds its piece to
    steps: list[tuple[str, Callable, int | None]] = [
        ("empty Litestar handler", _empty_app, None),
        ("ceiling: the empty handler + the charge statement (asyncpg)", lambda: ceiling(False), 0),
        ("ceiling + Redis GET: the ceiling + one HGET of the skill", lambda: ceiling(True), 1),
        ("skill-credits, its service call answered without I/O", skill_credits, 0),
        ("skill-credits as deployed: + its service call", skill_credits, 3),
    ]
    rows = []
    real_charge = service.charge
    for name, make, base in steps:
        service.charge = no_io if "without I/O" in name else real_charge
        row: dict = {"step": name, "adds_to": base}
        try:
            for concurrency, field in ((1, "cpu_us"), (32, "cpu_us_32")):
                runs = []
                for _ in range(3):  # the median of three: one app start can be an outlier
                    app = make()
                    configure_logging("warning")  # as `serve` does (Litestar's logs INFO)
                    cpu, statuses = uvloop.run(
                        _cpu_per_request(app, token, users, skill, concurrency)
                    )
                    if set(statuses) != {201}:  # a figure of failing requests means nothing
                        raise SystemExit(f"{name}: answered {statuses}")
                    runs.append(cpu)
                row |= {field: sorted(runs)[1], f"statuses_{concurrency}": statuses}
        finally:
            service.charge = real_charge
        rows.append(row)
    return rows


def ablations(db_url: str, redis_url: str, prefix: str, token: str, users: int, skill: str):
    """What each piece of skill-credits' request handling costs a charge at c=32.

    On the app whose service call is answered without I/O (step 4: steady to a few µs,
    where the database's noise would drown these pieces): the app with every piece, then
    without one, alternately three times each; medians."""
    import statistics

    from litestar.middleware import ASGIMiddleware

    from skill_credits import app as app_module
    from skill_credits import bodies, observability
    from skill_credits.auth import Principal
    from skill_credits.ledger import service
    from skill_credits.observability import configure_logging
    from skill_credits.settings import Settings

    class PassThrough(ASGIMiddleware):
        async def handle(self, scope, receive, send, next_app) -> None:
            await next_app(scope, receive, send)

    def metrics_without_charges():
        config, controller = observability.prometheus()
        config.exclude = [*config.exclude, "^/v1/charges"]
        return config, controller

    async def no_strict_body(request) -> None:
        return None

    principal = Principal(name="bench", role="service", key_id=token.split("_")[1])

    async def no_key_check(connection) -> None:
        connection.scope["auth"] = principal

    pieces = {
        "the Prometheus middleware (a lean subclass of Litestar's)": (
            app_module,
            "prometheus",
            metrics_without_charges,
        ),
        "the request-id middleware": (app_module, "RequestIdMiddleware", PassThrough),
        "the API-key check (hash, cache lookup)": (bodies, "authenticate", no_key_check),
        "the strict body check": (bodies, "strict_body", no_strict_body),
    }

    def cpu_32() -> float:
        app = app_module.create_app(
            Settings(database_url=db_url, redis_url=redis_url, redis_prefix=prefix)
        )
        configure_logging("warning")
        return uvloop.run(_cpu_per_request(app, token, users, skill, 32))[0]

    fixed = _fixed_answer(service, skill)

    async def no_io(*_, **__) -> service.Written:
        return fixed

    rows = []
    real_charge = service.charge
    service.charge = no_io
    try:
        for piece, (owner, attribute, replacement) in pieces.items():
            real = getattr(owner, attribute)
            with_it, without = [], []
            for _ in range(3):
                with_it.append(cpu_32())
                setattr(owner, attribute, replacement)
                try:
                    without.append(cpu_32())
                finally:
                    setattr(owner, attribute, real)
            rows.append(
                {
                    "without": piece,
                    "deployed_us": statistics.median(with_it),
                    "without_us": statistics.median(without),
                }
            )
    finally:
        service.charge = real_charge
    return rows


def _fixed_answer(service, skill: str):
    from skill_credits.ledger.schemas import Source, Transaction

    return service.Written(
        Transaction(
            id="00000000-0000-7000-8000-000000000000",
            user_id="bench_0",
            type="CONSUMPTION",
            amount=-1,
            balance_after=1,
            skill=skill,
            units=1,
            unit_cost=1,
            description=None,
            refund_of=None,
            member=None,
            grant_id=None,
            sources=[Source(grant_id="00000000-0000-7000-8000-000000000001", amount=1)],
            created_at=dt.datetime.now(dt.UTC),
        )
    )


def main() -> None:
    from tests.support.databases import create_keys, delete_prefix, drop_databases

    from bench.databases import PG, REDIS_URL, SKILL, USERS, fresh_database

    name = f"sc_bench_breakdown_{uuid.uuid4().hex[:6]}"
    prefix = f"bench_{name}:"
    url = fresh_database(PG, name)
    try:
        [token] = asyncio.run(create_keys(url, "service"))
        rows = measure(url, REDIS_URL, prefix, token, USERS, SKILL)
        for row in rows:
            print(
                f"{row['cpu_us']:7.0f} us (c=1) {row['cpu_us_32']:7.0f} us (c=32)  {row['step']}"
                f"  {row['statuses_1']} {row['statuses_32']}"
            )
        pieces = ablations(url, REDIS_URL, prefix, token, USERS, SKILL)
        for row in pieces:
            print(
                f"{row['deployed_us'] - row['without_us']:+7.0f} us  {row['without']}"
                f" ({row['deployed_us']:.0f} -> {row['without_us']:.0f})"
            )
        if len(sys.argv) == 3 and sys.argv[1] == "--json":
            Path(sys.argv[2]).write_text(json.dumps({"steps": rows, "pieces": pieces}, indent=1))
    finally:
        asyncio.run(drop_databases(PG, name))
        delete_prefix(REDIS_URL, prefix)


if __name__ == "__main__":
    main()
