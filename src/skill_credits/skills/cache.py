"""The Redis-cached skill catalogue, version-stamped.

Entries are written only by a compare-and-set script that refuses a version older
than (or equal to) the one stored, so a reader that loaded a skill before an edit can
never put the old version back after the edit published the new one. Nothing here is
trusted for money: the charge statement checks the version it was given against
PostgreSQL and a mismatch refreshes the entry.

Each worker also remembers the entries it read or wrote for ``remember`` seconds (one
by default), so at high volume a worker asks Redis about a skill about once a second,
not once per charge. Concurrent reads of one skill share one Redis round trip: a charge
that finds a read of its skill in flight waits for that answer instead of sending its
own. Both answers may predate the charge; that is safe for the same reason any cached
entry is: the statement checks the version, and a charge that finds it behind is
priced at the current one and leaves the current one here and in Redis.

Keys start with a prefix bound to the database being cached (``bind``; the app binds it
at start from the database's identity), so two databases sharing a Redis never see
each other's entries. An unbound cache answers every read with a miss, like a Redis
that is down.

Every call is bounded by ``timeout``; after a failure Redis is skipped for
``retry_after`` seconds, so a dead or hung Redis costs one request at most one
timeout, and writes that could not be made are repaired once Redis answers again.

An entry this release cannot read (written by an older one, before a field was added;
or by a newer one that changed a type) is a miss, never an error: the reader goes to
PostgreSQL, and its write replaces the entry at the next version.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from skill_credits.observability import CACHE_LOOKUPS
from skill_credits.skills.schemas import Skill, decode_skill, decode_skills, encode

D = TypeVar("D")

_HIT, _MISS = CACHE_LOOKUPS.labels("hit"), CACHE_LOOKUPS.labels("miss")

log = logging.getLogger(__name__)
T = TypeVar("T")


def _readable(decode: Callable[[bytes], D], raw: bytes | None) -> D | None:
    """``decode(raw)``, or None (a miss) for no entry or one of another release's shape."""
    if raw is None:
        return None
    try:
        return decode(raw)
    except msgspec.ValidationError:
        return None


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


def entry_key(prefix: str, name: str) -> str:
    """The Redis key of the skill ``name`` under a bound ``prefix`` (``cache_prefix``)."""
    return f"{prefix}skill:{name}"


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
        self,
        redis: Redis,
        prefix: str | None,
        *,
        timeout: float = 0.1,
        retry_after: float = 1.0,
        remember: float = 1.0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.timeout = timeout
        self.retry_after = retry_after
        self.remember = remember
        self._down_until = 0.0
        self._cas = redis.register_script(_CAS)
        # Set when a write could not reach Redis: the catalogue must be republished.
        self.needs_repair = False
        # skill name -> the answer of the read in flight, for the reads that join it
        self._reads: dict[str, asyncio.Future[Skill | None]] = {}
        # skill name -> (until when, entry): what this worker read or wrote lately
        self._recent: dict[str, tuple[float, Skill]] = {}
        self.hits = 0
        self.misses = 0

    def _key(self, name: str) -> str:
        return entry_key(self.prefix, name)

    @property
    def _catalogue_key(self) -> str:
        return f"{self.prefix}catalogue"

    def bind(self, prefix: str) -> None:
        """Use keys under ``prefix`` from now on (the app's: bound to its database)."""
        self.prefix = prefix

    @property
    def bound(self) -> bool:
        return self.prefix is not None

    @property
    def available(self) -> bool:
        return self.prefix is not None and time.monotonic() >= self._down_until

    async def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        if not self.available:
            raise RedisUnavailable("skipped: not bound yet, or Redis failed recently")
        try:
            async with asyncio.timeout(self.timeout):
                return await make()
        except Exception as exc:  # noqa: BLE001 - any Redis failure means "no cache"
            self._down_until = time.monotonic() + self.retry_after
            log.warning("redis unavailable: %s", exc.__class__.__name__)
            raise RedisUnavailable(str(exc)) from exc

    async def get(self, name: str) -> Skill | None:
        """The cached skill, or None on a miss or when Redis cannot answer."""
        recent = self._recent.get(name)
        if recent is not None and time.monotonic() < recent[0]:
            return self._count(recent[1])
        in_flight = self._reads.get(name)
        if in_flight is not None:
            # shield: a joiner that is cancelled must not cancel the answer for the rest
            return self._count(await asyncio.shield(in_flight))
        answer: asyncio.Future[Skill | None] = asyncio.get_running_loop().create_future()
        self._reads[name] = answer
        skill = None
        try:
            raw = await self._call(lambda: self.redis.hget(self._key(name), "d"))
            if (found := _readable(decode_skill, raw)) is not None:
                skill = self._remember(found)
        except RedisUnavailable:
            pass
        finally:
            # also when this request is cancelled: the joiners then read a miss
            del self._reads[name]
            answer.set_result(skill)
        return self._count(skill)

    def _remember(self, skill: Skill) -> Skill:
        """Keep the newest version known of ``skill`` for this worker's next reads; return it.

        Versions only grow, so an older one from Redis (one that missed an edit while it
        was down) never replaces a newer one this worker has seen."""
        recent = self._recent.get(skill.name)
        if recent is not None and recent[1].version > skill.version:
            skill = recent[1]
        self._recent[skill.name] = (time.monotonic() + self.remember, skill)
        return skill

    def _count(self, found: T | None) -> T | None:
        if found is None:
            self.misses += 1
            _MISS.inc()
        else:
            self.hits += 1
            _HIT.inc()
        return found

    async def put(self, skill: Skill) -> bool:
        """Store ``skill`` unless a newer version is there; False if Redis could not be told."""
        self._remember(skill)
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
        return self._count(_readable(decode_skills, raw))

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
