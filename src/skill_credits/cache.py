"""The Redis-cached skill catalogue, version-stamped.

Entries are written only by a compare-and-set script that refuses a version older
than (or equal to) the one stored, so a reader that loaded a skill before an edit can
never put the old version back after the edit published the new one. Nothing here is
trusted for money: the charge statement checks the version it was given against
PostgreSQL and a mismatch refreshes the entry.

Concurrent reads of one skill share one Redis round trip: a charge that finds a read of
its skill in flight waits for that answer instead of sending its own (at high volume
most charges of a worker do). The answer may predate the charge by that round trip;
that is safe for the same reason any cached entry is: the statement checks the version.

Every call is bounded by ``timeout``; after a failure Redis is skipped for
``retry_after`` seconds, so a dead or hung Redis costs one request at most one
timeout, and writes that could not be made are repaired once Redis answers again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from skill_credits.observability import CACHE_LOOKUPS
from skill_credits.skills.schemas import Skill, decode_skill, decode_skills, encode

_HIT, _MISS = CACHE_LOOKUPS.labels("hit"), CACHE_LOOKUPS.labels("miss")

log = logging.getLogger(__name__)
T = TypeVar("T")

# KEYS[1] = entry; ARGV = version, payload, ttl seconds. Writes only a newer version.
_CAS = """
local current = redis.call('HGET', KEYS[1], 'v')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'd', ARGV[2])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

ENTRY_TTL_SECONDS = 300


class RedisUnavailable(Exception):
    pass


def create_redis(url: str, timeout: float) -> Redis:
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


class SkillCache:
    def __init__(
        self, redis: Redis, prefix: str, *, timeout: float = 0.1, retry_after: float = 1.0
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self._down_until = 0.0
        self._cas = redis.register_script(_CAS)
        # Set when a write could not reach Redis: the catalogue must be republished.
        self.needs_repair = False
        # skill name -> the answer of the read in flight, for the reads that join it
        self._reads: dict[str, asyncio.Future[bytes | None]] = {}
        self.hits = 0
        self.misses = 0

    def _key(self, name: str) -> str:
        return f"{self.prefix}skill:{name}"

    @property
    def _catalogue_key(self) -> str:
        return f"{self.prefix}catalogue"

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        if not self.available:
            raise RedisUnavailable("skipped: Redis failed recently")
        try:
            async with asyncio.timeout(self.timeout):
                return await make()
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "no cache"
            self._down_until = time.monotonic() + self.retry_after
            log.warning("redis unavailable: %s", exc.__class__.__name__)
            raise RedisUnavailable(str(exc)) from exc

    async def get(self, name: str) -> Skill | None:
        """The cached skill, or None on a miss or when Redis cannot answer."""
        in_flight = self._reads.get(name)
        if in_flight is not None:
            # shield: a joiner that is cancelled must not cancel the answer for the rest
            return self._count(decode_skill, await asyncio.shield(in_flight))
        answer: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
        self._reads[name] = answer
        raw = None
        try:
            raw = await self._call(lambda: self.redis.hget(self._key(name), "d"))
        except RedisUnavailable:
            pass
        finally:
            # also when this request is cancelled: the joiners then read a miss
            del self._reads[name]
            answer.set_result(raw)
        return self._count(decode_skill, raw)

    def _count(self, decode, raw: bytes | None):
        if raw is None:
            self.misses += 1
            _MISS.inc()
            return None
        self.hits += 1
        _HIT.inc()
        return decode(raw)

    async def put(self, skill: Skill) -> bool:
        """Store ``skill`` unless a newer version is there; False if Redis could not be told."""
        try:
            await self._call(
                lambda: self._cas(
                    keys=[self._key(skill.name)],
                    args=[skill.version, encode(skill), ENTRY_TTL_SECONDS],
                )
            )
            return True
        except RedisUnavailable:
            self.needs_repair = True
            return False

    async def get_catalogue(self) -> list[Skill] | None:
        try:
            raw = await self._call(lambda: self.redis.hget(self._catalogue_key, "d"))
        except RedisUnavailable:
            raw = None
        return self._count(decode_skills, raw)

    async def put_catalogue(self, stamp: int, skills: list[Skill]) -> bool:
        try:
            await self._call(
                lambda: self._cas(
                    keys=[self._catalogue_key], args=[stamp, encode(skills), ENTRY_TTL_SECONDS]
                )
            )
            return True
        except RedisUnavailable:
            self.needs_repair = True
            return False

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self.timeout):
                await self.redis.ping()
            return True
        except Exception:  # noqa: BLE001
            return False

    async def close(self) -> None:
        await self.redis.aclose()
