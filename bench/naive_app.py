"""The naive handler: what a team would write in an afternoon on this stack, issue 29's
yardstick. Litestar + raw asyncpg, one guarded statement (an UPDATE that checks the balance,
feeding the log's INSERT) on a minimal schema of its own (``naive_*`` tables, seeded by
``bench.databases.naive_tables`` with the bench's users and skill), one Redis GET, and no
auth, validation, idempotency, grants, limits, problem details or metrics. A measuring
instrument for "what a user would get without skill-credits", not product code.

It answers 201 ``{id, balance_after}``, or 402 when the balance (or the skill) is not there.
"""

from __future__ import annotations

import os

import asyncpg
import msgspec
from litestar import Litestar, Response, post
from redis.asyncio import Redis

SQL = """WITH s AS (SELECT id, cost FROM naive_skill_configs WHERE name = $2 AND is_active),
u AS (UPDATE naive_users SET credits = credits - s.cost FROM s
      WHERE naive_users.id = $1 AND naive_users.credits >= s.cost
      RETURNING naive_users.id, naive_users.credits, s.cost, s.id AS skill_id)
INSERT INTO naive_credit_transactions (user_id, amount, type, skill_id, description,
                                       balance_after)
SELECT id, -cost, 'CONSUMPTION', skill_id, $3, credits FROM u RETURNING id, balance_after"""


class ChargeIn(msgspec.Struct):
    user_id: str
    skill: str
    description: str = ""


def create_app() -> Litestar:
    state: dict = {}

    async def start(_: Litestar) -> None:
        state["pool"] = await asyncpg.create_pool(
            os.environ["DATABASE_URL"], min_size=10, max_size=10
        )
        state["redis"] = Redis.from_url(os.environ["REDIS_URL"])

    async def stop(_: Litestar) -> None:
        await state["pool"].close()
        await state["redis"].aclose()

    @post("/v1/charges")
    async def charge(data: ChargeIn) -> Response:
        await state["redis"].get("skill:" + data.skill)
        async with state["pool"].acquire() as con:
            row = await con.fetchrow(SQL, data.user_id, data.skill, data.description)
        if row is None:
            return Response({"code": "insufficient_credits"}, status_code=402)
        return Response(
            {"id": str(row["id"]), "balance_after": row["balance_after"]}, status_code=201
        )

    return Litestar(
        route_handlers=[charge], on_startup=[start], on_shutdown=[stop], openapi_config=None
    )
