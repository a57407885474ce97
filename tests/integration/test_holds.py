"""Holds: reserve, then capture or release, like a card authorization."""

from __future__ import annotations

import asyncio

from tests.support.api import Api
from tests.support.databases import assert_reconciled


async def hold(api: Api, user: str, skill: str, key: str | None = None, **body):
    headers = api.keys.auth("service") | ({"Idempotency-Key": key} if key else {})
    return await api.c.post(
        "/v1/holds", json={"user_id": user, "skill": skill, **body}, headers=headers
    )


async def user_view(api: Api, user: str) -> dict:
    return (await api.c.get(f"/v1/users/{user}", headers=api.keys.auth("service"))).json()


async def test_hold_reserves_and_capture_charges_at_the_hold_price(api: Api, db) -> None:
    skill = await api.create_skill(cost=10)
    user = await api.new_user(100)
    r = await hold(api, user, skill["name"], units=5, ttl_seconds=60)
    assert r.status_code == 201, r.text
    h = r.json()
    assert (h["status"], h["units"], h["unit_cost"], h["amount"]) == ("held", 5, 10, 50)
    assert h["skill_version"] == skill["version"]
    view = await user_view(api, user)
    assert (view["credits"], view["reserved"], view["available"]) == (100, 50, 50)
    # reserved credits are not spendable by anything else
    r = await api.charge(user, skill["name"], units=6)
    assert (r.status_code, r.json()["code"], r.json()["required"]) == (
        402,
        "insufficient_credits",
        60,
    )
    # the price changes after the hold: the capture keeps the hold's price
    await api.patch_skill(skill["name"], cost=99)
    auth = api.keys.auth("service")
    r = await api.c.post(f"/v1/holds/{h['id']}/capture", json={"units": 3}, headers=auth)
    assert r.status_code == 201, r.text
    tx = r.json()
    assert (tx["type"], tx["amount"], tx["units"], tx["unit_cost"], tx["balance_after"]) == (
        "CONSUMPTION",
        -30,
        3,
        10,
        70,
    )
    view = await user_view(api, user)
    assert (view["credits"], view["reserved"], view["available"]) == (70, 0, 70)
    got = (await api.c.get(f"/v1/holds/{h['id']}", headers=auth)).json()
    assert got["status"] == "captured"
    again = await api.c.post(f"/v1/holds/{h['id']}/capture", json={}, headers=auth)
    assert (again.status_code, again.json()["code"]) == (409, "hold_not_active")
    released = await api.c.post(f"/v1/holds/{h['id']}/release", headers=auth)
    assert released.status_code == 409
    await assert_reconciled(db)


async def test_capture_defaults_to_reserved_units_and_refuses_more(api: Api, db) -> None:
    skill = await api.create_skill(cost=4)
    user = await api.new_user(40)
    h = (await hold(api, user, skill["name"], units=3)).json()
    auth = api.keys.auth("service")
    r = await api.c.post(f"/v1/holds/{h['id']}/capture", json={"units": 4}, headers=auth)
    assert (r.status_code, r.json()["code"]) == (400, "validation_error")
    assert "units" in r.json()["detail"]
    r = await api.c.post(f"/v1/holds/{h['id']}/capture", headers=auth)
    assert r.status_code == 201 and r.json()["amount"] == -12
    assert (await user_view(api, user))["credits"] == 28
    await assert_reconciled(db)


async def test_release_and_expiry_return_everything(api: Api, db) -> None:
    skill = await api.create_skill(cost=7)
    user = await api.new_user(70)
    auth = api.keys.auth("service")
    kept = (await hold(api, user, skill["name"], units=4)).json()
    short = (await hold(api, user, skill["name"], units=6, ttl_seconds=1)).json()
    assert (await user_view(api, user))["available"] == 0
    r = await api.c.post(f"/v1/holds/{kept['id']}/release", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "released"
    assert (await user_view(api, user))["available"] == 70 - 42
    await asyncio.sleep(1.2)
    # expired the instant it passed: no job has run, and nothing counts it as reserved
    view = await user_view(api, user)
    assert (view["credits"], view["reserved"], view["available"]) == (70, 0, 70)
    got = (await api.c.get(f"/v1/holds/{short['id']}", headers=auth)).json()
    assert got["status"] == "expired"
    r = await api.c.post(f"/v1/holds/{short['id']}/capture", headers=auth)
    assert (r.status_code, r.json()["code"]) == (409, "hold_not_active")
    assert (await api.charge(user, skill["name"], units=10)).status_code == 201
    await assert_reconciled(db)


async def test_concurrent_holds_never_over_reserve(api: Api, db) -> None:
    skill = await api.create_skill(cost=7)
    user = await api.new_user(500)
    results = await asyncio.gather(*(hold(api, user, skill["name"]) for _ in range(120)))
    codes = [r.status_code for r in results]
    assert codes.count(201) == 500 // 7 and codes.count(402) == 120 - 500 // 7
    view = await user_view(api, user)
    assert (view["reserved"], view["available"]) == (7 * (500 // 7), 500 % 7)
    await assert_reconciled(db)


async def test_holds_and_charges_racing_never_overcommit(api: Api, db) -> None:
    skill = await api.create_skill(cost=5)
    user = await api.new_user(300)
    work = [hold(api, user, skill["name"]) for _ in range(60)]
    work += [api.charge(user, skill["name"]) for _ in range(60)]
    results = await asyncio.gather(*work)
    held = sum(1 for r in results[:60] if r.status_code == 201)
    charged = sum(1 for r in results[60:] if r.status_code == 201)
    assert {r.status_code for r in results} <= {201, 402}
    assert held + charged == 300 // 5
    view = await user_view(api, user)
    assert view["credits"] == 300 - 5 * charged and view["reserved"] == 5 * held
    assert view["available"] == 0
    # every hold can still be captured: the reservations were real
    ids = [r.json()["id"] for r in results[:60] if r.status_code == 201]
    auth = api.keys.auth("service")
    captures = await asyncio.gather(
        *(api.c.post(f"/v1/holds/{i}/capture", headers=auth) for i in ids)
    )
    assert {c.status_code for c in captures} == {201}
    assert (await user_view(api, user))["credits"] == 0
    await assert_reconciled(db)


async def test_concurrent_captures_of_one_hold_charge_once(api: Api, db) -> None:
    skill = await api.create_skill(cost=3)
    user = await api.new_user(30)
    h = (await hold(api, user, skill["name"], units=2)).json()
    auth = api.keys.auth("service")
    results = await asyncio.gather(
        *(api.c.post(f"/v1/holds/{h['id']}/capture", headers=auth) for _ in range(15))
    )
    assert sorted(r.status_code for r in results) == [201] + [409] * 14
    assert (await user_view(api, user))["credits"] == 24
    await assert_reconciled(db)


async def test_hold_idempotency_and_errors(api: Api, db) -> None:
    skill = await api.create_skill(cost=2)
    off = await api.create_skill(cost=2, is_active=False)
    user = await api.new_user(10)
    first = await hold(api, user, skill["name"], key="h-1", units=2)
    again = await hold(api, user, skill["name"], key="h-1", units=2)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    other = await hold(api, user, skill["name"], key="h-1", units=3)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert (await user_view(api, user))["reserved"] == 4
    auth = api.keys.auth("service") | {"Idempotency-Key": "cap-1"}
    url = f"/v1/holds/{first.json()['id']}/capture"
    c1 = await api.c.post(url, json={"units": 1}, headers=auth)
    c2 = await api.c.post(url, json={"units": 1}, headers=auth)
    assert c1.status_code == c2.status_code == 201 and c1.json() == c2.json()
    assert c2.headers["Idempotent-Replayed"] == "true"
    for body, code in [
        ({"skill": "NO_SUCH_SKILL_HERE"}, "skill_not_found"),
        ({"skill": off["name"]}, "skill_disabled"),
        ({"user_id": "nobody_holds_here"}, "user_not_found"),
        ({"units": 100}, "insufficient_credits"),
    ]:
        r = await hold(api, body.pop("user_id", user), body.pop("skill", skill["name"]), **body)
        assert r.json()["code"] == code, r.text
    for body in [{"ttl_seconds": 0}, {"ttl_seconds": 86_401}, {"units": 0}, {"x": 1}]:
        r = await hold(api, user, skill["name"], **body)
        assert r.status_code == 400, (body, r.text)
    r = await api.c.get("/v1/holds/not-a-uuid", headers=api.keys.auth("service"))
    assert r.status_code == 400
    r = await api.c.get(
        "/v1/holds/7b0c5d7e-0000-4000-8000-000000000000", headers=api.keys.auth("service")
    )
    assert (r.status_code, r.json()["code"]) == (404, "hold_not_found")
    await assert_reconciled(db)
