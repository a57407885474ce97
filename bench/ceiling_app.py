"""The ceiling: a minimal Litestar handler that runs only skill-credits' charge statement.

No auth, no validation, no cache, no idempotency: it parses the body and runs the very
same SQL, compiled from ``skill_credits.ledger.repository.CHARGE`` (including its check
that the bench's API key is live), over an asyncpg pool whose release costs no round
trip, and answers 201 or 402.
"""

from __future__ import annotations

import os

import asyncpg
import msgspec
from litestar import Litestar, Request, Response, post
from sqlalchemy.dialects.postgresql import asyncpg as pg_asyncpg

from skill_credits.ledger.repository import CHARGE

_compiled = CHARGE.compile(dialect=pg_asyncpg.dialect())
SQL = str(_compiled)
ORDER = _compiled.positiontup


async def _no_reset(_: asyncpg.Connection) -> None:
    return None


def create_app() -> Litestar:
    dsn = os.environ["DATABASE_URL"]
    key_id = os.environ.get("BENCH_KEY_ID", "")  # the statement checks the caller's key too
    state: dict = {}

    async def start(_: Litestar) -> None:
        state["pool"] = await asyncpg.create_pool(dsn, min_size=4, max_size=10, reset=_no_reset)

    async def stop(_: Litestar) -> None:
        await state["pool"].close()

    @post("/v1/charges")
    async def charge(request: Request) -> Response:
        body = msgspec.json.decode(await request.body())
        values = {
            "skill": body["skill"],
            "version": None,
            "user_id": body["user_id"],
            "units": 1,
            "description": None,
            "key": None,
            "hash": None,
            "api_key_id": key_id,
        }
        async with state["pool"].acquire() as con:
            row = await con.fetchrow(SQL, *(values[name] for name in ORDER))
        if row is None:
            return Response(b'{"code":"insufficient_credits"}', status_code=402)
        return Response(
            msgspec.json.encode({"id": row["id"], "balance_after": row["balance_after"]}),
            status_code=201,
            media_type="application/json",
        )

    return Litestar(
        route_handlers=[charge], on_startup=[start], on_shutdown=[stop], openapi_config=None
    )
