"""The ceiling: a minimal Litestar handler that runs only skill-credits' charge statement.

No auth, no validation, no cache: it parses the body and runs the very same SQL,
compiled from ``skill_credits.ledger.repository.CHARGE`` (including its check that the
bench's API key is live), over an asyncpg pool whose release costs no round trip, and
answers 201 or 402. The request's ``Idempotency-Key``, when it has one, goes into the
statement unchecked (no replay, no request hash), so the database does the same work
for the same request as under skill-credits: a keyed charge also probes and fills the
key's unique index.

With ``CEILING_REDIS_URL`` and ``CEILING_REDIS_KEY`` set, it also reads the skill's
cache entry from Redis first (one HGET, as skill-credits does): the floor of the design,
which reads the skill's version from Redis on every charge.
"""

from __future__ import annotations

import os

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, post
from redis.asyncio import Redis
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from skill_credits.ledger.repository import CHARGE

# the statement as asyncpg takes it: positional parameters, in this order
COMPILED = CHARGE.compile(dialect=pg_asyncpg.dialect())
SQL, ORDER = str(COMPILED), COMPILED.positiontup


def create_app() -> Litestar:
    dsn = os.environ["DATABASE_URL"]
    key_id = os.environ.get("BENCH_KEY_ID", "")  # the statement checks the caller's key too
    redis_url, redis_key = os.environ.get("CEILING_REDIS_URL"), os.environ.get("CEILING_REDIS_KEY")
    state: dict = {}

    async def release_as_is(_: asyncpg.Connection) -> None:
        """asyncpg's reset on release is a round trip; a connection that ran one autocommit
        statement has no session state to reset."""

    async def start(_: Litestar) -> None:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=4, max_size=10, reset=release_as_is)
        state["redis"] = Redis.from_url(redis_url) if redis_url and redis_key else None

    async def stop(_: Litestar) -> None:
        await state["pool"].close()
        if state["redis"] is not None:
            await state["redis"].aclose()

    @post("/v1/charges")
    async def charge(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        if state["redis"] is not None:
            await state["redis"].hget(redis_key, "d")
        values = {
            "skill": body["skill"],
            "version": None,
            "user_id": body["user_id"],
            "units": 1,
            "description": None,
            "key": request.headers.get("idempotency-key"),
            "hash": None,
            "api_key_id": key_id,
            "member": None,
            "limited": False,
        }
        async with state["pool"].acquire() as con:
            row = await con.fetchrow(SQL, *(values[name] for name in ORDER))
        if row["outcome"] != "written":  # the charge function says why it wrote nothing
            return Response(b'{"code":"insufficient_credits"}', status_code=402)
        return Response(
            msgspec.json.encode({"id": row["id"], "balance_after": row["balance_after"]}),
            status_code=201,
            media_type="application/json",
        )

    return Litestar(
        route_handlers=[charge], on_startup=[start], on_shutdown=[stop], openapi_config=None
    )
