"""Spend limits and members: what a charge, hold, capture, release, expiry and refund
count, checked and counted in the same call as the write, under real concurrency."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime, timedelta

import httpx

from skill_credits.usage import service as usage_service
from tests.support.api import Api
from tests.support.databases import assert_reconciled
from tests.support.processes import AppServer
from tests.support.run import unique


def next_boundary(window: str, now: datetime) -> datetime:
    if window == "minute":
        return now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    if window == "hour":
        return now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    if window == "day":
        return now.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1)
    first = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    return (first + timedelta(days=32)).replace(day=1)


async def add_limit(api: Api, user: str, **body) -> httpx.Response:
    return await api.c.post(f"/v1/users/{user}/limits", json=body, headers=api.keys.auth("service"))


async def limits(api: Api, user: str) -> list[dict]:
    r = await api.c.get(f"/v1/users/{user}/limits", headers=api.keys.auth("service"))
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def spent(api: Api, user: str) -> dict[str, int]:
    items = await limits(api, user)
    return {f"{x['window']}:{x['member']}:{x['skill']}": x["spent"] for x in items}


async def hold(api: Api, user: str, skill: str, **body) -> httpx.Response:
    return await api.c.post(
        "/v1/holds",
        json={"user_id": user, "skill": skill, **body},
        headers=api.keys.auth("service"),
    )


async def log(api: Api, user: str, **params) -> list[dict]:
    r = await api.c.get(
        f"/v1/users/{user}/transactions", params=params, headers=api.keys.auth("service")
    )
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_a_limit_is_made_listed_changed_and_removed(api: Api, db) -> None:
    skill = await api.create_skill(cost=3)
    user = await api.new_user(100)
    before = datetime.now(UTC)
    r = await add_limit(api, user, window="day", max_credits=10)
    assert r.status_code == 201, r.text
    made = r.json()
    assert {k: made[k] for k in ("user_id", "member", "skill", "window", "max_credits")} == {
        "user_id": user,
        "member": None,
        "skill": None,
        "window": "day",
        "max_credits": 10,
    }
    assert made["spent"] == 0
    assert datetime.fromisoformat(made["resets_at"]) == next_boundary("day", before)
    r = await add_limit(api, user, window="hour", max_credits=5, member="bob", skill=skill["name"])
    assert r.status_code == 201, r.text
    assert (r.json()["member"], r.json()["skill"]) == ("bob", skill["name"])
    assert [x["id"] for x in await limits(api, user)] == [made["id"], r.json()["id"]]

    auth = api.keys.auth("service")
    r = await api.c.patch(
        f"/v1/users/{user}/limits/{made['id']}", json={"max_credits": 20}, headers=auth
    )
    assert (r.status_code, r.json()["max_credits"]) == (200, 20)
    r = await api.c.delete(f"/v1/users/{user}/limits/{made['id']}", headers=auth)
    assert r.status_code == 204
    assert len(await limits(api, user)) == 1
    # a limit of another user, or one removed already, is not found
    other = await api.new_user(1)
    (kept,) = await limits(api, user)
    for method, path in (
        ("DELETE", f"/v1/users/{user}/limits/{made['id']}"),
        ("PATCH", f"/v1/users/{other}/limits/{kept['id']}"),
        ("DELETE", f"/v1/users/{other}/limits/{kept['id']}"),
    ):
        r = await api.c.request(method, path, json={"max_credits": 1}, headers=auth)
        assert (r.status_code, r.json()["code"]) == (404, "limit_not_found"), r.text
    await assert_reconciled(db)


async def test_limit_refusals(api: Api) -> None:
    skill = await api.create_skill(cost=3)
    user = await api.new_user(10)
    assert (await add_limit(api, user, window="day", max_credits=9)).status_code == 201
    r = await add_limit(api, user, window="day", max_credits=1)
    assert (r.status_code, r.json()["code"]) == (409, "limit_exists")
    # the same window for a member, or a skill, is another limit
    assert (await add_limit(api, user, window="day", max_credits=9, member="m")).status_code == 201
    r = await add_limit(api, user, window="day", max_credits=9, skill=skill["name"])
    assert r.status_code == 201
    r = await add_limit(api, "nobody-" + unique("u").lower(), window="day", max_credits=1)
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    r = await add_limit(api, user, window="day", max_credits=1, skill="NO_SUCH_SKILL_X")
    assert (r.status_code, r.json()["code"]) == (404, "skill_not_found")
    for bad in (
        {"window": "week", "max_credits": 1},
        {"window": "day", "max_credits": -1},
        {"window": "day", "max_credits": 2**53 + 1},
        {"window": "day", "max_credits": 1, "member": "has space"},
        {"window": "day"},
        {"window": "day", "max_credits": 1, "extra": 1},
    ):
        r = await add_limit(api, user, **bad)
        assert (r.status_code, r.json()["code"]) == (400, "validation_error"), bad
    auth = api.keys.auth("service")
    r = await api.c.patch(f"/v1/users/{user}/limits/x", json={"max_credits": 1}, headers=auth)
    assert r.status_code == 400
    assert len(await limits(api, user)) == 3


async def test_members_are_kept_and_filter_the_log(api: Api) -> None:
    skill = await api.create_skill(cost=1)
    user = await api.new_user(50)
    assert (await api.charge(user, skill["name"], member="bob")).json()["member"] == "bob"
    assert (await api.charge(user, skill["name"])).json()["member"] is None
    h = (await hold(api, user, skill["name"], member="amy")).json()
    assert h["member"] == "amy"
    captured = await api.c.post(f"/v1/holds/{h['id']}/capture", headers=api.keys.auth("service"))
    assert captured.json()["member"] == "amy"
    assert [t["member"] for t in await log(api, user, member="bob")] == ["bob"]
    assert [t["member"] for t in await log(api, user, member="amy")] == ["amy"]
    assert len(await log(api, user)) == 4  # the grant too
    r = await api.c.get(
        f"/v1/users/{user}/transactions", params={"member": "a b"}, headers=api.keys.auth("service")
    )
    assert (r.status_code, r.json()["code"]) == (400, "validation_error")
    r = await api.charge(user, skill["name"], member="")
    assert r.status_code == 400


async def test_a_charge_past_a_limit_is_429_and_writes_nothing(api: Api, db) -> None:
    skill = await api.create_skill(cost=3)
    user = await api.new_user(100)
    made = (await add_limit(api, user, window="day", max_credits=10)).json()
    for _ in range(3):
        assert (await api.charge(user, skill["name"])).status_code == 201
    rows = len(await log(api, user))
    r = await api.charge(user, skill["name"])
    assert r.status_code == 429, r.text
    body = r.json()
    assert (body["code"], body["required"]) == ("spend_limit_exceeded", 3)
    assert (body["limit"]["id"], body["limit"]["spent"], body["limit"]["max_credits"]) == (
        made["id"],
        9,
        10,
    )
    wait = (datetime.fromisoformat(body["limit"]["resets_at"]) - datetime.now(UTC)).total_seconds()
    assert abs(int(r.headers["Retry-After"]) - math.ceil(wait)) <= 1
    assert (await api.balance(user), len(await log(api, user))) == (91, rows)
    # a limit raised applies from the next charge
    await api.c.patch(
        f"/v1/users/{user}/limits/{made['id']}",
        json={"max_credits": 12},
        headers=api.keys.auth("service"),
    )
    assert (await api.charge(user, skill["name"])).status_code == 201
    assert (await api.charge(user, skill["name"])).status_code == 429
    await assert_reconciled(db)


async def test_which_limits_apply(api: Api) -> None:
    """A member's limit stops that member only; a skill's limit that skill only; 402 wins
    over 429."""
    a = await api.create_skill(cost=2)
    b = await api.create_skill(cost=2)
    user = await api.new_user(100)
    await add_limit(api, user, window="hour", max_credits=4, member="bob")
    await add_limit(api, user, window="day", max_credits=6, skill=a["name"])
    assert (await api.charge(user, a["name"], member="bob")).status_code == 201
    assert (await api.charge(user, b["name"], member="bob")).status_code == 201
    r = await api.charge(user, b["name"], member="bob")
    assert (r.status_code, r.json()["limit"]["member"]) == (429, "bob")
    assert (await api.charge(user, a["name"], member="amy")).status_code == 201
    assert (await api.charge(user, a["name"])).status_code == 201
    r = await api.charge(user, a["name"], member="amy")
    assert (r.status_code, r.json()["limit"]["skill"]) == (429, a["name"])
    assert (await api.charge(user, b["name"], member="amy")).status_code == 201
    assert await spent(api, user) == {"hour:bob:None": 4, f"day:None:{a['name']}": 6}
    # short of credits and over a limit: 402
    r = await api.charge(user, a["name"], units=1000)
    assert (r.status_code, r.json()["code"]) == (402, "insufficient_credits")


async def test_holds_count_until_they_stop(api: Api, db) -> None:
    """A hold counts its amount when made; a release, a smaller capture and an expiry
    give back what it did not charge; a refund gives back what it refunds."""
    skill = await api.create_skill(cost=2)
    user = await api.new_user(100)
    await add_limit(api, user, window="day", max_credits=12)
    auth = api.keys.auth("service")
    big = (await hold(api, user, skill["name"], units=5)).json()
    assert await spent(api, user) == {"day:None:None": 10}
    assert (await api.charge(user, skill["name"])).status_code == 201
    assert (await api.charge(user, skill["name"])).status_code == 429
    r = await hold(api, user, skill["name"])
    assert (r.status_code, r.json()["code"]) == (429, "spend_limit_exceeded")
    await api.c.post(f"/v1/holds/{big['id']}/release", headers=auth)
    assert await spent(api, user) == {"day:None:None": 2}
    partly = (await hold(api, user, skill["name"], units=5)).json()
    r = await api.c.post(f"/v1/holds/{partly['id']}/capture", json={"units": 2}, headers=auth)
    assert r.status_code == 201
    assert await spent(api, user) == {"day:None:None": 6}
    refunded = await api.c.post(f"/v1/transactions/{r.json()['id']}/refund", headers=auth)
    assert refunded.status_code == 201
    assert await spent(api, user) == {"day:None:None": 2}
    short = (await hold(api, user, skill["name"], units=5, ttl_seconds=1)).json()
    assert short["status"] == "held"
    assert await spent(api, user) == {"day:None:None": 12}
    await asyncio.sleep(1.2)
    # no job has run: the hold stopped counting the instant it expired
    assert await spent(api, user) == {"day:None:None": 2}
    assert (await api.charge(user, skill["name"], units=5)).status_code == 201
    await assert_reconciled(db)


async def test_a_new_limit_counts_what_was_spent_in_its_window(api: Api) -> None:
    skill = await api.create_skill(cost=3)
    user = await api.new_user(100)
    first = (await api.charge(user, skill["name"], member="bob")).json()
    await api.charge(user, skill["name"], member="amy")
    await api.charge(user, skill["name"], member="bob")
    await api.c.post(f"/v1/transactions/{first['id']}/refund", headers=api.keys.auth("service"))
    await hold(api, user, skill["name"], units=2, member="bob")
    r = await add_limit(api, user, window="month", max_credits=100)
    assert r.json()["spent"] == 3 + 3 + 6
    r = await add_limit(api, user, window="minute", max_credits=100, member="bob")
    assert r.json()["spent"] == 3 + 6


async def test_a_window_that_passed_counts_nothing(api: Api, db) -> None:
    """No job resets a window: a limit whose counted window is over has spent 0 (here the
    first charge and the window it counted in are moved back an hour, as the clock would
    move forward)."""
    skill = await api.create_skill(cost=5)
    user = await api.new_user(100)
    made = (await add_limit(api, user, window="hour", max_credits=5)).json()
    first = (await api.charge(user, skill["name"])).json()
    assert (await api.charge(user, skill["name"])).status_code == 429
    async with db.connect() as conn:  # an hour back, as values (Citus refuses a
        # STABLE expression of a column in an UPDATE: timestamptz - interval is one)
        await conn.exec_driver_sql(
            f"UPDATE limits SET window_start = '{made['resets_at']}'::timestamptz"
            f" - interval '2 hours' WHERE user_id = '{user}' AND id = '{made['id']}'"
        )
        await conn.exec_driver_sql(
            f"UPDATE transactions SET created_at = '{first['created_at']}'::timestamptz"
            f" - interval '1 hour' WHERE user_id = '{user}' AND id = '{first['id']}'"
        )
    # a log row moved behind the usage rollups' mark (a worker may have rolled up since):
    # the documented mend, or reconcile finds that hour (docs/usage.md)
    await usage_service.rebuild(db)
    assert await spent(api, user) == {"hour:None:None": 0}
    assert (await api.charge(user, skill["name"])).status_code == 201
    assert await spent(api, user) == {"hour:None:None": 5}
    await assert_reconciled(db)


async def test_removing_the_last_limit_frees_the_user(api: Api, db) -> None:
    skill = await api.create_skill(cost=1)
    user = await api.new_user(10)
    made = (await add_limit(api, user, window="day", max_credits=1)).json()
    assert (await api.charge(user, skill["name"])).status_code == 201
    assert (await api.charge(user, skill["name"])).status_code == 429
    auth = api.keys.auth("service")
    await api.c.delete(f"/v1/users/{user}/limits/{made['id']}", headers=auth)
    assert (await api.charge(user, skill["name"])).status_code == 201
    async with db.connect() as conn:
        limited = await conn.exec_driver_sql(f"SELECT limited FROM users WHERE user_id = '{user}'")
        assert limited.scalar() is False


async def test_exactly_floor_of_limit_over_cost_succeed_on_two_workers(
    server_env, keys, db
) -> None:
    server = AppServer(server_env, workers=2)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            api = Api(http, keys)
            skill = await api.create_skill(cost=3)
            user = await api.new_user(10**6)
            other = await api.new_user(10**6)
            await add_limit(api, user, window="day", max_credits=50)
            await add_limit(api, other, window="day", max_credits=50, member="bob")
            results = await asyncio.gather(
                *(api.charge(user, skill["name"]) for _ in range(40)),
                *(
                    api.charge(other, skill["name"], member=("bob" if i % 2 else "amy"))
                    for i in range(40)
                ),
            )
            mine, theirs = results[:40], results[40:]
            assert sorted({r.status_code for r in results}) == [201, 429]
            assert sum(r.status_code == 201 for r in mine) == 50 // 3
            bob = [r for i, r in enumerate(theirs) if i % 2]
            amy = [r for i, r in enumerate(theirs) if not i % 2]
            assert sum(r.status_code == 201 for r in bob) == 50 // 3
            assert all(r.status_code == 201 for r in amy)  # bob's limit never blocks amy
            assert await spent(api, user) == {"day:None:None": 48}
            assert await api.balance(user) == 10**6 - 48
        await assert_reconciled(db)
    finally:
        server.stop()


async def test_a_worker_learns_which_users_have_limits_from_its_charges(
    api: Api, db, client
) -> None:
    """The hint (limited.LimitedUsers) follows what the charges report: a user gains it on
    the first charge after a limit is made, and loses it on the first after the last goes."""
    from skill_credits.ledger import service
    from skill_credits.ledger.limited import LimitedUsers
    from skill_credits.ledger.schemas import ChargeIn

    skill = (await api.create_skill(cost=1))["name"]
    user = await api.new_user(100)
    hint = LimitedUsers()
    cache = client.app.state.cache

    async def charge() -> int:
        data = ChargeIn(user_id=user, skill=skill)
        written = await service.charge(db, cache, data, None, None, api_key_id=None, limited=hint)
        return written.transaction.balance_after

    assert await charge() == 99 and user not in hint
    made = (await add_limit(api, user, window="day", max_credits=50)).json()
    assert await charge() == 98 and user in hint
    assert await charge() == 97 and user in hint  # the limited way; the day so far counts
    assert {lim["id"]: lim["spent"] for lim in await limits(api, user)} == {made["id"]: 3}
    await api.c.delete(f"/v1/users/{user}/limits/{made['id']}", headers=api.keys.auth("service"))
    assert await charge() == 96 and user not in hint
    await assert_reconciled(db)
