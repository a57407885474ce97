"""Shared skill reads when a caller is cancelled (a client hung up): nobody else waits
forever or fails for it. A fake Redis whose answer the test releases by hand."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from skill_credits.skills.cache import SkillCache
from skill_credits.skills.schemas import Skill, encode

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ENTRY = encode(
    Skill(
        id="00000000-0000-4000-8000-000000000000",
        name="S",
        display_name="S",
        description=None,
        cost=3,
        is_active=True,
        version=7,
        created_at=NOW,
        updated_at=NOW,
    )
)


class SlowRedis:
    def __init__(self) -> None:
        self.calls = 0
        self.release = asyncio.Event()

    async def hget(self, key: str, field: str) -> bytes:
        self.calls += 1
        await self.release.wait()
        return ENTRY

    def register_script(self, script: str):
        return None


async def reading(joiners: int):
    """One read of skill S in flight and ``joiners`` more waiting on it."""
    redis = SlowRedis()
    cache = SkillCache(redis, "t:", timeout=5)
    leader = asyncio.create_task(cache.get("S"))
    others = [asyncio.create_task(cache.get("S")) for _ in range(joiners)]
    for _ in range(3):
        await asyncio.sleep(0)
    return redis, cache, leader, others


async def test_a_cancelled_joiner_does_not_cancel_the_answer_for_the_rest() -> None:
    redis, _, leader, joiners = await reading(3)
    joiners[0].cancel()
    redis.release.set()
    assert (await leader).version == 7
    assert [(await j).version for j in joiners[1:]] == [7, 7]
    with pytest.raises(asyncio.CancelledError):
        await joiners[0]
    assert redis.calls == 1


async def test_a_cancelled_leader_leaves_the_joiners_a_miss_not_a_hang() -> None:
    redis, cache, leader, joiners = await reading(2)
    leader.cancel()
    async with asyncio.timeout(1):
        assert await asyncio.gather(*joiners) == [None, None]
    # the next read is a fresh one, and finds the entry
    redis.release.set()
    assert (await cache.get("S")).version == 7
    assert redis.calls == 2
