from __future__ import annotations

import asyncio
from typing import Literal

from litestar import Response, get
from litestar.di import NamedDependency
from litestar.openapi import ResponseSpec
from msgspec import Struct
from sqlalchemy import text

from skill_credits.db import Database
from skill_credits.skills.cache import SkillCache


async def ping(db: Database) -> None:
    """One round trip to PostgreSQL (readiness); raises when it does not answer."""
    async with db.autocommit.connect() as conn:
        await conn.execute(text("SELECT 1"))


class Readiness(Struct):
    postgres: Literal["up", "down"]
    redis: Literal["up", "down"]


@get("/healthz", tags=["operations"], summary="The process lives", operation_id="getHealth")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@get(
    "/readyz",
    tags=["operations"],
    summary="PostgreSQL answers (and is Redis up?)",
    operation_id="getReadiness",
    responses={
        503: ResponseSpec(
            Readiness, description="PostgreSQL does not answer", generate_examples=False
        )
    },
)
async def readyz(
    db: NamedDependency[Database], cache: NamedDependency[SkillCache]
) -> Response[Readiness]:
    try:
        async with asyncio.timeout(1.5):
            await ping(db)
        postgres = "up"
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        postgres = "down"
    redis = "up" if await cache.ping() else "down"
    status = 200 if postgres == "up" else 503
    return Response(Readiness(postgres, redis), status_code=status)
