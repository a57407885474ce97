"""Auto-recharge: a top-up asked for exactly once when a balance runs low, capped exactly,
fulfilled once; against the real servers, in-process and as `skill-credits serve`."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from sqlalchemy import text

from tests.support.api import Api
from tests.support.databases import assert_reconciled
from tests.support.processes import AppServer


async def set_rule(api: Api, user: str, **body) -> dict:
    r = await api.c.put(
        f"/v1/users/{user}/auto-recharge", json=body, headers=api.keys.auth("service")
    )
    assert r.status_code == 200, r.text
    return r.json()


async def get_rule(api: Api, user: str) -> dict:
    r = await api.c.get(f"/v1/users/{user}/auto-recharge", headers=api.keys.auth("service"))
    assert r.status_code == 200, r.text
    return r.json()


async def requests_of(api: Api, user: str, **params) -> list[dict]:
    r = await api.c.get(
        f"/v1/users/{user}/recharges",
        params={"limit": 200, **params},
        headers=api.keys.auth("service"),
    )
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def recharge_events(api: Api, user: str) -> list[dict]:
    r = await api.c.get(
        "/v1/events", params={"user_id": user, "limit": 200}, headers=api.keys.auth("service")
    )
    assert r.status_code == 200, r.text
    return [e for e in r.json()["items"] if e["type"].startswith("balance.recharge")]


async def fulfil(api: Api, recharge_id: str, **body) -> httpx.Response:
    return await api.c.post(
        f"/v1/recharges/{recharge_id}/fulfil", json=body, headers=api.keys.auth("service")
    )


async def fail(api: Api, recharge_id: str, reason: str = "card declined") -> httpx.Response:
    return await api.c.post(
        f"/v1/recharges/{recharge_id}/fail",
        json={"reason": reason},
        headers=api.keys.auth("service"),
    )


async def pending(api: Api, user: str) -> dict | None:
    return (await get_rule(api, user))["pending"]


async def test_a_change_that_leaves_available_low_asks_once_and_fulfil_buys_once(
    api: Api, db
) -> None:
    skill = (await api.create_skill(cost=10))["name"]
    user = await api.new_user(100)
    rule = await set_rule(api, user, threshold=50, amount=200, expires_in_days=30)
    assert rule == rule | {
        "user_id": user,
        "threshold": 50,
        "amount": 200,
        "max_per_month": None,
        "category": "paid",
        "priority": 50,
        "expires_in_days": 30,
        "status": "active",
        "requested_this_month": 0,
        "consecutive_failures": 0,
        "pending": None,
    }
    for _ in range(4):  # 90 … 60: above the threshold
        assert (await api.charge(user, skill)).status_code == 201
    assert await requests_of(api, user) == []
    assert (await api.charge(user, skill)).status_code == 201  # 50: at the threshold
    assert (await api.charge(user, skill)).status_code == 201  # 40: one is pending already
    [asked] = await requests_of(api, user)
    assert asked == asked | {"user_id": user, "amount": 200, "status": "pending"}
    assert asked["reference"] is None and asked["resolved_at"] is None
    rule = await get_rule(api, user)
    assert rule["pending"] == asked and rule["requested_this_month"] == 200
    [event] = await recharge_events(api, user)
    assert event["type"] == "balance.recharge_requested" and event["data"] == asked
    got = await api.c.get(f"/v1/recharges/{asked['id']}", headers=api.keys.auth("service"))
    assert got.status_code == 200 and got.json() == asked

    r = await fulfil(api, asked["id"], reference="pi_123")
    assert r.status_code == 201, r.text
    assert "Idempotent-Replayed" not in r.headers
    purchase = r.json()
    assert (purchase["type"], purchase["amount"], purchase["balance_after"]) == (
        "PURCHASE",
        200,
        240,
    )
    assert asked["id"] in purchase["description"]
    again = await fulfil(api, asked["id"], reference="something else")
    assert again.status_code == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert again.json() == purchase
    assert await api.balance(user) == 240
    done = (
        await api.c.get(f"/v1/recharges/{asked['id']}", headers=api.keys.auth("service"))
    ).json()
    assert done == done | {
        "status": "fulfilled",
        "reference": "pi_123",
        "transaction_id": purchase["id"],
    }
    assert done["resolved_at"] is not None
    grants = (await api.c.get(f"/v1/users/{user}/grants", headers=api.keys.auth("service"))).json()[
        "items"
    ]
    [bought] = [g for g in grants if g["id"] == purchase["grant_id"]]
    assert (bought["category"], bought["priority"]) == ("paid", 50)
    expires = datetime.fromisoformat(bought["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    types = [e["type"] for e in await recharge_events(api, user)]
    assert types == ["balance.recharge_fulfilled", "balance.recharge_requested"]
    r = await fail(api, asked["id"])
    assert (r.status_code, r.json()["code"]) == (409, "recharge_not_pending")
    assert (await get_rule(api, user))["pending"] is None
    await assert_reconciled(db)


async def test_hold_capture_negative_adjustment_and_expiry_each_ask(api: Api, db) -> None:
    """Each change that leaves available at or below the threshold asks (after a failure
    frees the way); a release and a credit, which raise it, do not."""
    skill = (await api.create_skill(cost=10))["name"]
    service = api.keys.auth("service")
    user = await api.new_user(100)
    await set_rule(api, user, threshold=50, amount=100)

    async def asked_now() -> dict:
        found = await pending(api, user)
        assert found is not None
        return found

    hold = await api.c.post(
        "/v1/holds", json={"user_id": user, "skill": skill, "units": 6}, headers=service
    )
    assert hold.status_code == 201  # available 40
    first = await asked_now()
    assert (await fail(api, first["id"])).status_code == 200
    assert await pending(api, user) is None
    second = await api.c.post("/v1/holds", json={"user_id": user, "skill": skill}, headers=service)
    assert second.status_code == 201
    assert (await asked_now())["id"] != first["id"]  # a hold asks
    assert (await fail(api, (await asked_now())["id"])).status_code == 200
    release = await api.c.post(f"/v1/holds/{second.json()['id']}/release", headers=service)
    assert release.status_code == 200  # available 40: up, so no request
    await api.credit(user, 1)  # a credit raises it too
    assert await pending(api, user) is None
    capture = await api.c.post(
        f"/v1/holds/{hold.json()['id']}/capture", json={"units": 6}, headers=service
    )
    assert capture.status_code == 201
    third = await asked_now()  # a capture asks
    # two failures in a row now (the fulfil of none between): a fulfil clears the count
    assert (await fulfil(api, third["id"])).status_code == 201
    assert (await get_rule(api, user))["consecutive_failures"] == 0
    r = await api.c.post(
        f"/v1/users/{user}/credits",
        json={"amount": -100, "type": "ADJUSTMENT"},
        headers=api.keys.auth("admin"),
    )
    assert r.status_code == 201, r.text
    fourth = await asked_now()  # a negative adjustment asks
    assert (await fail(api, fourth["id"])).status_code == 200

    # an expiry: a grant that lapses in a moment takes available down when written off
    expiring = await api.new_user(0)
    soon = datetime.now(UTC) + timedelta(seconds=1.5)
    r = await api.c.post(
        f"/v1/users/{expiring}/credits",
        json={"amount": 80, "type": "GRANT", "expires_at": soon.isoformat()},
        headers=api.keys.auth("admin"),
    )
    assert r.status_code == 201
    await api.credit(expiring, 30, "PURCHASE")
    await set_rule(api, expiring, threshold=50, amount=100)
    assert (await get_rule(api, expiring))["pending"] is None
    await asyncio.sleep(2)
    assert await api.balance(expiring) == 30  # read: written off, and asked
    rule = await get_rule(api, expiring)
    assert rule["pending"] is not None and rule["pending"]["amount"] == 100
    await assert_reconciled(db)


async def test_setting_a_rule_while_low_asks_at_once_and_removing_it_cancels(api: Api, db) -> None:
    user = await api.new_user(10)
    rule = await set_rule(api, user, threshold=50, amount=25, category="promotional", priority=5)
    asked = rule["pending"]
    assert asked is not None and asked["amount"] == 25 and rule["requested_this_month"] == 25
    assert [e["type"] for e in await recharge_events(api, user)] == ["balance.recharge_requested"]
    # setting it again while one is pending asks nothing more
    rule = await set_rule(api, user, threshold=60, amount=30)
    assert rule["pending"]["id"] == asked["id"] and len(await requests_of(api, user)) == 1
    service = api.keys.auth("service")
    r = await api.c.delete(f"/v1/users/{user}/auto-recharge", headers=service)
    assert r.status_code == 204
    canceled = (await api.c.get(f"/v1/recharges/{asked['id']}", headers=service)).json()
    assert canceled["status"] == "canceled" and canceled["resolved_at"] is not None
    r = await api.c.get(f"/v1/users/{user}/auto-recharge", headers=service)
    assert (r.status_code, r.json()["code"]) == (404, "auto_recharge_not_found")
    r = await api.c.delete(f"/v1/users/{user}/auto-recharge", headers=service)
    assert (r.status_code, r.json()["code"]) == (404, "auto_recharge_not_found")
    r = await fulfil(api, asked["id"])
    assert (r.status_code, r.json()["code"]) == (409, "recharge_not_pending")
    r = await fail(api, asked["id"])
    assert (r.status_code, r.json()["code"]) == (409, "recharge_not_pending")
    # the purchase a fulfilled request makes takes the category and priority it asked with
    rule = await set_rule(api, user, threshold=50, amount=25, category="promotional", priority=5)
    r = await fulfil(api, rule["pending"]["id"])
    grants = (await api.c.get(f"/v1/users/{user}/grants", headers=service)).json()["items"]
    [bought] = [g for g in grants if g["id"] == r.json()["grant_id"]]
    assert (bought["category"], bought["priority"], bought["expires_at"]) == (
        "promotional",
        5,
        None,
    )
    assert [q["status"] for q in await requests_of(api, user)] == ["fulfilled", "canceled"]
    assert [q["status"] for q in await requests_of(api, user, status="canceled")] == ["canceled"]
    await assert_reconciled(db)


async def test_three_failures_in_a_row_suspend_until_the_rule_is_set_again(api: Api, db) -> None:
    skill = (await api.create_skill(cost=1))["name"]
    user = await api.new_user(40)
    await set_rule(api, user, threshold=50, amount=10)  # low already: asks at once
    for attempt in range(1, 4):
        asked = await pending(api, user)
        assert asked is not None, attempt
        r = await fail(api, asked["id"], reason=f"declined {attempt}")
        assert r.status_code == 200 and r.json()["status"] == "failed"
        assert r.json()["reason"] == f"declined {attempt}"
        repeat = await fail(api, asked["id"], reason="another reason")
        assert repeat.status_code == 200 and repeat.json() == r.json()  # changes nothing
        assert (await get_rule(api, user))["consecutive_failures"] == attempt
        assert (await api.charge(user, skill)).status_code == 201  # asks again, but the third
    rule = await get_rule(api, user)
    assert (rule["status"], rule["pending"]) == ("suspended", None)
    assert (await api.charge(user, skill)).status_code == 201
    assert len(await requests_of(api, user)) == 3
    types = [e["type"] for e in await recharge_events(api, user)]
    assert types[0] == "balance.recharge_suspended"
    assert types.count("balance.recharge_requested") == 3
    suspended = (await recharge_events(api, user))[0]["data"]
    assert suspended["status"] == "suspended" and suspended["consecutive_failures"] == 3
    rule = await set_rule(api, user, threshold=50, amount=10)  # set again: active, asks
    assert (rule["status"], rule["consecutive_failures"]) == ("active", 0)
    assert rule["pending"] is not None
    await assert_reconciled(db)


async def test_a_request_pending_for_24_hours_expires_and_frees_the_way(api: Api, db) -> None:
    skill = (await api.create_skill(cost=1))["name"]
    user = await api.new_user(10)
    asked = (await set_rule(api, user, threshold=50, amount=10))["pending"]
    # a day passes for this request: its instants (and the user's next due) a day earlier
    # (values, not expressions of the columns: a Citus cluster runs this too)
    asked_at = datetime.fromisoformat(asked["created_at"])
    async with db.autocommit.connect() as conn:
        await conn.execute(
            text(
                "UPDATE recharges SET created_at = :created, expires_at = :expires"
                " WHERE user_id = :u AND id = CAST(:id AS uuid)"
            ),
            {
                "u": user,
                "id": asked["id"],
                "created": asked_at - timedelta(hours=24),
                "expires": asked_at,
            },
        )
        await conn.execute(
            text("UPDATE users SET next_due = :due WHERE user_id = :u"),
            {"u": user, "due": asked_at},
        )
    got = (await api.c.get(f"/v1/recharges/{asked['id']}", headers=api.keys.auth("service"))).json()
    assert got["status"] == "expired"
    assert datetime.fromisoformat(got["resolved_at"]) == datetime.fromisoformat(asked["created_at"])
    assert (await pending(api, user)) is None
    assert (await fulfil(api, asked["id"])).status_code == 409
    assert (await api.charge(user, skill)).status_code == 201  # the next change asks again
    fresh = await pending(api, user)
    assert fresh is not None and fresh["id"] != asked["id"]
    assert (await get_rule(api, user))["consecutive_failures"] == 0  # an expiry is no failure
    await assert_reconciled(db)


async def test_the_monthly_cap_is_exact_under_concurrent_charges_and_fulfils(api: Api, db) -> None:
    """Each fulfil leaves the balance low, so the next charge asks again, until this
    month's requests reach the cap: exactly three of 100 under a cap of 300."""
    skill = (await api.create_skill(cost=1))["name"]
    user = await api.new_user(500)
    await set_rule(api, user, threshold=10_000, amount=100, max_per_month=300)

    async def charges() -> None:
        for _ in range(60):
            assert (await api.charge(user, skill)).status_code == 201

    async def fulfils() -> None:
        for _ in range(200):
            asked = await pending(api, user)
            if asked is not None:
                r = await fulfil(api, asked["id"])
                assert r.status_code == 201, r.text
            await asyncio.sleep(0.005)

    await asyncio.gather(*(charges() for _ in range(4)), fulfils())
    charged = 240
    for _ in range(4):  # whatever the burst left to ask: a charge asks, a fulfil pays
        asked = await pending(api, user)
        if asked is not None:
            assert (await fulfil(api, asked["id"])).status_code == 201
        assert (await api.charge(user, skill)).status_code == 201
        charged += 1
    made = await requests_of(api, user)
    assert [q["status"] for q in made] == ["fulfilled"] * 3
    rule = await get_rule(api, user)
    assert rule["requested_this_month"] == 300 and rule["pending"] is None
    assert await api.balance(user) == 500 - charged + 300
    await assert_reconciled(db)


async def test_bad_input_is_a_clear_4xx_and_changes_nothing(api: Api, db) -> None:
    service = api.keys.auth("service")
    user = await api.new_user(100)
    path = f"/v1/users/{user}/auto-recharge"
    for body in [
        {},
        {"threshold": 10},
        {"threshold": -1, "amount": 10},
        {"threshold": 10, "amount": 0},
        {"threshold": 10, "amount": 2**53 + 1},
        {"threshold": "10", "amount": 10},
        {"threshold": 10, "amount": 10, "max_per_month": 0},
        {"threshold": 10, "amount": 10, "category": "gift"},
        {"threshold": 10, "amount": 10, "priority": 101},
        {"threshold": 10, "amount": 10, "expires_in_days": 0},
        {"threshold": 10, "amount": 10, "expires_in_days": 3651},
        {"threshold": 10, "amount": 10, "extra": 1},
    ]:
        r = await api.c.put(path, json=body, headers=service)
        assert (r.status_code, r.json()["code"]) == (400, "validation_error"), body
    r = await api.c.get(path, headers=service)
    assert (r.status_code, r.json()["code"]) == (404, "auto_recharge_not_found")
    nobody = "nobody_" + uuid.uuid4().hex[:8]
    for method in ("PUT", "GET", "DELETE"):
        r = await api.c.request(
            method,
            f"/v1/users/{nobody}/auto-recharge",
            json={"threshold": 1, "amount": 1} if method == "PUT" else None,
            headers=service,
        )
        assert (r.status_code, r.json()["code"]) == (404, "user_not_found"), method
    r = await api.c.get(f"/v1/users/{nobody}/recharges", headers=service)
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    for params in [{"status": "done"}, {"limit": 0}, {"limit": 201}, {"cursor": "!!"}]:
        r = await api.c.get(f"/v1/users/{user}/recharges", params=params, headers=service)
        assert r.status_code == 400, params
    unknown = str(uuid.uuid4())
    for method, suffix, body in [
        ("GET", "", None),
        ("POST", "/fulfil", {}),
        ("POST", "/fail", {"reason": "x"}),
    ]:
        r = await api.c.request(
            method, f"/v1/recharges/{unknown}{suffix}", json=body, headers=service
        )
        assert (r.status_code, r.json()["code"]) == (404, "recharge_not_found"), suffix
        r = await api.c.request(
            method, f"/v1/recharges/not-a-uuid{suffix}", json=body, headers=service
        )
        assert r.status_code == 400, suffix
    asked = (await set_rule(api, user, threshold=100, amount=10))["pending"]
    for body in [{}, {"reason": ""}, {"reason": "x" * 501}, {"reason": "a\x00b"}, {"why": "x"}]:
        r = await api.c.post(f"/v1/recharges/{asked['id']}/fail", json=body, headers=service)
        assert r.status_code == 400, body
    for body in [{"reference": "x" * 256}, {"reference": 5}, {"other": 1}]:
        r = await api.c.post(f"/v1/recharges/{asked['id']}/fulfil", json=body, headers=service)
        assert r.status_code == 400, body
    assert (await pending(api, user))["id"] == asked["id"]  # nothing changed
    assert await api.balance(user) == 100
    r = await api.c.put(path, json={"threshold": 1, "amount": 1})
    assert r.status_code == 401
    # pages of a user's requests, newest first
    for _ in range(4):
        asked = await pending(api, user)
        assert (await fail(api, asked["id"])).status_code == 200
        await set_rule(api, user, threshold=100, amount=10)  # clears the failures, asks
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        r = await api.c.get(f"/v1/users/{user}/recharges", params=params, headers=service)
        seen += [q["id"] for q in r.json()["items"]]
        if (cursor := r.json()["next_cursor"]) is None:
            break
    assert seen == [q["id"] for q in await requests_of(api, user)] and len(seen) == 5
    await assert_reconciled(db)


@pytest.fixture(params=["batched", "one by one"])
def two_workers(server_env, request):
    """Two workers, their charges batched (the default) or each its own call."""
    env = server_env | ({"CHARGE_BATCH_MAX": "1"} if request.param == "one by one" else {})
    server = AppServer(env, workers=2)
    server.start()
    yield server
    server.stop()


async def test_concurrent_charges_on_two_workers_make_one_request_and_fulfils_one_purchase(
    two_workers, keys, db
) -> None:
    async with httpx.AsyncClient(base_url=two_workers.url, timeout=30) as http:
        api = Api(http, keys)
        skill = (await api.create_skill(cost=10))["name"]
        user = await api.new_user(1000)
        await set_rule(api, user, threshold=500, amount=300)
        answers = await asyncio.gather(*(api.charge(user, skill) for _ in range(80)))
        assert [r.status_code for r in answers] == [201] * 80
        [asked] = await requests_of(api, user)
        assert asked["status"] == "pending"
        events = await recharge_events(api, user)
        assert [e["data"]["id"] for e in events] == [asked["id"]]
        fulfils = await asyncio.gather(*(fulfil(api, asked["id"]) for _ in range(12)))
        assert [r.status_code for r in fulfils] == [201] * 12
        assert len({r.json()["id"] for r in fulfils}) == 1
        assert sum("Idempotent-Replayed" not in r.headers for r in fulfils) == 1
        assert await api.balance(user) == 1000 - 800 + 300
    await assert_reconciled(db)


async def test_a_worker_killed_mid_burst_leaves_one_pending_request_not_two_nor_none(
    server_env, keys, db
) -> None:
    server = AppServer(server_env, workers=2)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            api = Api(http, keys)
            skill = (await api.create_skill(cost=1))["name"]
            users = [await api.new_user(300) for _ in range(6)]
            for user in users:
                await set_rule(api, user, threshold=200, amount=50)

            async def burst(user: str) -> None:
                for _ in range(150):
                    try:
                        await api.charge(user, skill)
                    except httpx.HTTPError:
                        pass  # the killed worker's connections

            tasks = [asyncio.create_task(burst(u)) for u in users for _ in range(3)]
            await asyncio.sleep(0.8)
            os.kill(server.worker_pids()[0], signal.SIGKILL)
            await asyncio.gather(*tasks)
            for user in users:
                balance = await api.balance(user)
                made = await requests_of(api, user)
                assert [q["status"] for q in made] == (["pending"] if balance <= 200 else [])
                events = await recharge_events(api, user)
                assert [e["data"]["id"] for e in events] == [q["id"] for q in made]
    finally:
        server.stop()
    await assert_reconciled(db)
