"""The skill cache on a real Redis: versions only move forward; failures cost one timeout."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from litestar.testing import AsyncTestClient

from skill_credits.app import create_app
from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from skill_credits.skills.cache import SkillCache, create_redis
from skill_credits.skills.schemas import Skill, encode
from tests.support.databases import create_keys, drop_databases
from tests.support.processes import OwnRedis
from tests.support.run import run_in_thread, unique


def skill(name: str, version: int, cost: int) -> Skill:
    now = datetime.now(UTC)
    return Skill(
        id="00000000-0000-4000-8000-000000000000",
        name=name,
        display_name=name,
        description=None,
        cost=cost,
        is_active=True,
        version=version,
        created_at=now,
        updated_at=now,
    )


async def test_an_older_version_never_replaces_a_newer_one(settings) -> None:
    cache = SkillCache(create_redis(settings.redis_url, 0.2), settings.redis_prefix, remember=0)
    try:
        name = unique("CAS")
        assert await cache.get(name) is None
        assert await cache.put(skill(name, 2, 20))
        # a reader that loaded version 1 before the edit comes late with it
        await cache.put(skill(name, 1, 10))
        assert (await cache.get(name)).version == 2
        await cache.put(skill(name, 3, 30))
        assert (await cache.get(name)).cost == 30
        assert (cache.hits, cache.misses) == (2, 1)
    finally:
        await cache.close()


async def test_an_entry_of_an_older_release_is_a_miss(settings) -> None:
    """A release that adds a skill field reads entries the previous one wrote (without
    it): each is a miss that PostgreSQL answers, never an error, and the next put replaces
    it. The same for the catalogue."""
    import msgspec

    cache = SkillCache(create_redis(settings.redis_url, 0.2), settings.redis_prefix, remember=0)
    try:
        name = unique("OLD")
        old = msgspec.to_builtins(skill(name, 1, 10))
        del old["description"]  # as if this field were new in this release
        await cache.redis.hset(cache._key(name), mapping={"v": 1, "d": msgspec.json.encode(old)})
        await cache.redis.hset(
            cache._catalogue_key, mapping={"v": 1, "d": msgspec.json.encode([old])}
        )
        assert await cache.get(name) is None
        assert await cache.get_catalogue() is None
        assert (cache.hits, cache.misses) == (0, 2)
        assert await cache.put(skill(name, 2, 20))
        assert (await cache.get(name)).cost == 20
    finally:
        await cache.redis.delete(cache._key(name), cache._catalogue_key)
        await cache.close()


@pytest.fixture
async def hung():
    """A cache whose own Redis holds skill HUNG and then stops answering."""
    async with OwnRedis(timeout=0.1, remember=0) as own:
        await own.cache.put(skill("HUNG", 1, 1))
        own.server.pause()
        yield own.cache


async def test_a_hung_redis_costs_one_timeout_then_is_skipped(hung: SkillCache) -> None:
    started = time.monotonic()
    assert await hung.get("HUNG") is None
    first = time.monotonic() - started
    started = time.monotonic()
    for _ in range(20):
        assert await hung.get("HUNG") is None
    rest = time.monotonic() - started
    assert first < 0.25 and rest < 0.05
    assert not await hung.put(skill("HUNG", 2, 2)) and hung.needs_repair


async def test_concurrent_reads_of_one_skill_share_one_round_trip() -> None:
    """Fifty charges of one worker asking at once send one HGET (a Redis of the test's own,
    so its command counts are this test's); one asking afterwards sends its own."""
    import asyncio

    async with OwnRedis(remember=0) as own:
        cache = own.cache
        await cache.put(skill("SHARED", 4, 40))
        before = await own.calls("hget")
        found = await asyncio.gather(*(cache.get("SHARED") for _ in range(50)))
        assert [s.version for s in found] == [4] * 50
        assert await own.calls("hget") - before == 1
        assert (cache.hits, cache.misses) == (50, 0)
        await cache.put(skill("SHARED", 5, 50))  # (its script runs an HGET of its own)
        before = await own.calls("hget")
        assert (await cache.get("SHARED")).version == 5
        assert await own.calls("hget") - before == 1


async def test_reads_sharing_a_hung_redis_cost_one_timeout_together(hung: SkillCache) -> None:
    """Redis stops answering while reads of one skill wait on a single read in flight:
    all of them come back as a miss within that read's timeout, none hangs."""
    import asyncio

    started = time.monotonic()
    found = await asyncio.gather(*(hung.get("HUNG") for _ in range(30)))
    assert found == [None] * 30
    assert time.monotonic() - started < 0.25  # the contract's bound for a hung Redis
    assert hung.misses == 30


async def test_a_worker_remembers_a_skill_for_a_while_and_the_newest_version_it_saw() -> None:
    """Reads within ``remember`` of the last one send no HGET; the first read after it
    asks Redis again; a Redis that holds an older version than this worker has seen
    (it missed an edit) does not take the worker's newer one away."""
    import asyncio

    async with OwnRedis(remember=0.3) as own:
        cache = own.cache
        await cache.put(skill("KEPT", 1, 10))  # (its script runs an HGET of its own)
        before = await own.calls("hget")
        assert [(await cache.get("KEPT")).version for _ in range(100)] == [1] * 100
        assert await own.calls("hget") == before
        assert (cache.hits, cache.misses) == (100, 0)

        await own.admin.hset("t:skill:KEPT", mapping={"v": 2, "d": encode(skill("KEPT", 2, 20))})
        await asyncio.sleep(0.35)
        assert (await cache.get("KEPT")).cost == 20  # asked Redis again
        assert await own.calls("hget") == before + 1
        await cache.get("KEPT")
        assert await own.calls("hget") == before + 1

        await cache.put(skill("KEPT", 5, 50))  # this worker saw version 5 ...
        await own.admin.hset("t:skill:KEPT", mapping={"v": 3, "d": encode(skill("KEPT", 3, 30))})
        await asyncio.sleep(0.35)
        assert (await cache.get("KEPT")).version == 5  # ... Redis holds 3: 5 stays
        before = await own.calls("hget")
        assert (await cache.get("UNKNOWN")) is None  # a miss is not remembered:
        assert (await cache.get("UNKNOWN")) is None
        assert await own.calls("hget") == before + 2  # each asks Redis
        assert cache.misses == 2


async def _twin(url: str, settings) -> tuple[Settings, dict[str, str]]:
    """A database of its own at ``url`` (migrated) on the run's Redis and prefix."""
    run_in_thread(migrate, Settings(database_url=url))
    twin = Settings(
        database_url=url, redis_url=settings.redis_url, redis_prefix=settings.redis_prefix
    )
    [token] = await create_keys(url, "admin")
    return twin, {"Authorization": f"Bearer {token}"}


async def _drop(url: str) -> None:
    await drop_databases(*url.rsplit("/", 1))


async def test_two_databases_on_one_redis_never_see_each_others_skills(settings) -> None:
    """Two deployments share one Redis and the default prefix; one database is dropped
    and made again behind a live Redis. Each sees only its own catalogue throughout."""
    urls = [f"{settings.database_url}_twin_a", f"{settings.database_url}_twin_b"]
    (a, admin_a), (b, admin_b) = [await _twin(url, settings) for url in urls]
    name = unique("TWIN")
    async with (
        AsyncTestClient(app=create_app(a)) as api_a,
        AsyncTestClient(app=create_app(b)) as api_b,
    ):
        for api, admin, cost in ((api_a, admin_a, 5), (api_b, admin_b, 9)):
            body = {"name": name, "display_name": name, "cost": cost}
            assert (await api.post("/v1/admin/skills", json=body, headers=admin)).status_code == 201

        async def costs(api, admin) -> dict[str, int]:
            r = await api.get("/v1/skills", headers=admin)
            return {s["name"]: s["cost"] for s in r.json()["items"]}

        assert await costs(api_a, admin_a) == {name: 5}
        assert await costs(api_b, admin_b) == {name: 9}
        # an edit in one (version 2) is neither seen by nor refused to the other
        r = await api_a.patch(f"/v1/admin/skills/{name}", json={"cost": 6}, headers=admin_a)
        assert r.status_code == 200
        r = await api_b.patch(f"/v1/admin/skills/{name}", json={"cost": 10}, headers=admin_b)
        assert r.status_code == 200
        assert await costs(api_a, admin_a) == {name: 6}
        assert await costs(api_b, admin_b) == {name: 10}

    await _drop(urls[0])  # the same database name made again: it must not find A's entries
    a, admin_a = await _twin(urls[0], settings)
    try:
        async with AsyncTestClient(app=create_app(a)) as api_a:
            assert await costs(api_a, admin_a) == {}
            r = await api_a.get(f"/v1/admin/skills/{name}", headers=admin_a)
            assert r.status_code == 404
    finally:
        for url in urls:
            await _drop(url)


async def test_an_unbound_cache_asks_redis_nothing() -> None:
    """Until the app has read its database's identity, the cache is a miss for every read
    and a write is left to the repair, with no Redis command sent under any prefix."""
    async with OwnRedis() as own:
        cache = SkillCache(own.cache.redis, None, timeout=0.5, remember=0)
        assert await cache.get("ANY") is None
        assert not await cache.put(skill("ANY", 1, 1))
        assert cache.needs_repair
        assert await own.calls("hget") == await own.calls("evalsha") == 0
        cache.bind("bound:")
        assert await cache.put(skill("ANY", 1, 1))
        assert (await cache.get("ANY")).cost == 1
        assert await own.admin.exists("bound:skill:ANY")
