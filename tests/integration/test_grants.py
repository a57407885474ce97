"""Grants over HTTP: credits with an expiry, a priority and a category, spent in order.

The database functions themselves are tested in test_grants_sql.py; these tests hold the
routes to the contract: the new fields of a credit and their 400s, the grants list and
its order, sources on every debit, credits_by_category, expiry seen through the API and
written off by the worker's sweep, and reconcile.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from skill_credits.ledger import service
from skill_credits.ledger.repository import reconcile


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def credit(api, user: str, amount: int, type_: str = "PURCHASE", key=None, **extra):
    headers = api.keys.auth("admin") | ({"Idempotency-Key": key} if key else {})
    return await api.c.post(
        f"/v1/users/{user}/credits",
        json={"amount": amount, "type": type_, **extra},
        headers=headers,
    )


async def grants(api, user: str, **params) -> dict:
    r = await api.c.get(f"/v1/users/{user}/grants", params=params, headers=api.keys.auth("service"))
    assert r.status_code == 200, r.text
    return r.json()


async def assert_reconciled(db) -> None:
    async with db.connect() as conn:
        assert await reconcile(conn) == []


async def test_credits_make_grants_spent_in_order(api, db) -> None:
    skill = await api.create_skill(cost=10)
    user = await api.new_user(0)
    soon = datetime.now(UTC) + timedelta(days=2)
    paid = (await credit(api, user, 8)).json()
    gift = (await credit(api, user, 5, "GRANT", expires_at=iso(soon), priority=10)).json()
    assert paid["grant_id"] and gift["grant_id"] and paid["sources"] == []
    listed = (await grants(api, user))["items"]
    assert [(g["id"], g["category"], g["priority"], g["remaining"]) for g in listed] == [
        (gift["grant_id"], "promotional", 10, 5),
        (paid["grant_id"], "paid", 50, 8),
    ]
    assert listed[0]["expires_at"] is not None and listed[1]["expires_at"] is None
    assert listed[0]["transaction_id"] == gift["id"] and listed[0]["status"] == "active"
    r = await api.charge(user, skill["name"])
    assert r.status_code == 201, r.text
    assert [(s["grant_id"], s["amount"]) for s in r.json()["sources"]] == [
        (gift["grant_id"], 5),
        (paid["grant_id"], 5),
    ]
    view = (await api.c.get(f"/v1/users/{user}", headers=api.keys.auth("service"))).json()
    assert (view["credits"], view["credits_by_category"]) == (3, {"paid": 3, "promotional": 0})
    depleted = (await grants(api, user, status="depleted"))["items"]
    assert [g["id"] for g in depleted] == [gift["grant_id"]]
    await assert_reconciled(db)


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"expires_at": "2001-01-01T00:00:00Z"}, "expires_at"),
        ({"expires_at": iso(datetime.now(UTC) + timedelta(days=3700))}, "expires_at"),
        ({"expires_at": "2030-01-01T00:00:00"}, "expires_at"),
        ({"expires_at": "soon"}, "expires_at"),
        ({"priority": 101}, "priority"),
        ({"priority": -1}, "priority"),
        ({"priority": "5"}, "priority"),
        ({"category": "gift"}, "category"),
    ],
)
async def test_a_grants_fields_are_checked(api, extra, field) -> None:
    user = await api.new_user(5)
    r = await credit(api, user, 5, **extra)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (400, "validation_error", field)


@pytest.mark.parametrize(
    "extra",
    [
        {"priority": 5},
        {"category": "paid"},
        {"expires_at": iso(datetime.now(UTC) + timedelta(days=1))},
    ],
)
async def test_a_negative_adjustment_takes_no_grant_fields(api, extra) -> None:
    user = await api.new_user(5)
    r = await credit(api, user, -1, "ADJUSTMENT", **extra)
    assert (r.status_code, r.json()["code"], r.json()["field"]) == (
        400,
        "validation_error",
        next(iter(extra)),
    )
    assert await api.balance(user) == 5


async def test_defaults_are_part_of_the_request(api) -> None:
    """An absent priority or category and the default spelled out are the same request."""
    user = await api.new_user(0)
    first = await credit(api, user, 5, "GRANT", key="g1")
    again = await credit(api, user, 5, "GRANT", key="g1", priority=50, category="promotional")
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.json() == first.json()
    other = await credit(api, user, 5, "GRANT", key="g1", priority=40)
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")


async def test_the_grants_list_pages_and_refuses_bad_input(api) -> None:
    user = await api.new_user(0)
    made = [(await credit(api, user, 1, priority=p)).json()["grant_id"] for p in (30, 10, 20)]
    first = await grants(api, user, limit=2)
    assert [g["id"] for g in first["items"]] == [made[1], made[2]] and first["next_cursor"]
    rest = await grants(api, user, limit=2, cursor=first["next_cursor"])
    assert [g["id"] for g in rest["items"]] == [made[0]] and rest["next_cursor"] is None
    auth = api.keys.auth("service")
    for params, field in (
        ({"status": "gone"}, "status"),
        ({"cursor": "nope"}, "cursor"),
        ({"limit": 0}, "limit"),
    ):
        r = await api.c.get(f"/v1/users/{user}/grants", params=params, headers=auth)
        assert (r.status_code, r.json()["code"]) == (400, "validation_error"), (params, r.text)
        assert r.json().get("field") == field
    r = await api.c.get(f"/v1/users/{user}_nobody/grants", headers=auth)
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    # a well-formed cursor of another user's grant is not a position in this list
    other = await api.new_user(1)
    r = await api.c.get(
        f"/v1/users/{other}/grants", params={"cursor": first["next_cursor"]}, headers=auth
    )
    assert (r.status_code, r.json().get("field")) == (400, "cursor"), r.text


async def test_a_retry_after_the_expiry_passed_gets_the_original_answer(api, db) -> None:
    """An Idempotency-Key's replay comes before the rule that an expiry is in the future:
    a client retrying a grant after its expiry passed learns it was written, once."""
    user = await api.new_user(0)
    soon = datetime.now(UTC) + timedelta(seconds=1)
    first = await credit(api, user, 5, "GRANT", key="late", expires_at=iso(soon))
    assert first.status_code == 201, first.text
    await asyncio.sleep(max(0.0, (soon - datetime.now(UTC)).total_seconds()) + 0.1)
    again = await credit(api, user, 5, "GRANT", key="late", expires_at=iso(soon))
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.json() == first.json()
    other = await credit(api, user, 6, "GRANT", key="late", expires_at=iso(soon))
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    fresh = await credit(api, user, 5, "GRANT", key="late-2", expires_at=iso(soon))
    assert (fresh.status_code, fresh.json()["field"]) == (400, "expires_at")
    log = await api.c.get(f"/v1/users/{user}/transactions", headers=api.keys.auth("service"))
    assert [t["type"] for t in log.json()["items"]] == ["EXPIRY", "GRANT"]  # one grant, once
    await assert_reconciled(db)


async def test_one_instant_in_any_offset_is_one_request(api) -> None:
    user = await api.new_user(0)
    first = await credit(api, user, 5, "GRANT", key="tz", expires_at="2030-06-01T00:00:00Z")
    again = await credit(api, user, 5, "GRANT", key="tz", expires_at="2030-06-01T05:30:00+05:30")
    assert (again.status_code, again.headers.get("Idempotent-Replayed")) == (201, "true")
    assert again.json() == first.json()


async def test_an_expired_grant_is_written_off_before_any_read_sees_it(api, db) -> None:
    user = await api.new_user(4)
    instant = datetime.now(UTC) + timedelta(seconds=1)
    g = (await credit(api, user, 6, "GRANT", expires_at=iso(instant))).json()
    assert await api.balance(user) == 10
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()) + 0.05)
    auth = api.keys.auth("service")
    log = (await api.c.get(f"/v1/users/{user}/transactions", headers=auth)).json()["items"]
    assert [(t["type"], t["amount"], t["balance_after"]) for t in log[:1]] == [("EXPIRY", -6, 4)]
    assert log[0]["sources"] == [{"grant_id": g["grant_id"], "amount": 6}]
    assert await api.balance(user) == 4
    expired = (await grants(api, user, status="expired"))["items"]
    assert [(x["id"], x["remaining"]) for x in expired] == [(g["grant_id"], 0)]
    expiry = await api.c.get(f"/v1/users/{user}/transactions?type=EXPIRY", headers=auth)
    assert len(expiry.json()["items"]) == 1
    await assert_reconciled(db)


async def test_the_workers_sweep_writes_off_what_no_request_touched(api, db) -> None:
    user = await api.new_user(0)
    instant = datetime.now(UTC) + timedelta(seconds=1)
    await credit(api, user, 7, "GRANT", expires_at=iso(instant))
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()) + 0.05)
    assert await service.expire_due(db) >= 1
    async with db.connect() as conn:
        rows = (
            await conn.execute(
                text("SELECT type, amount FROM transactions WHERE user_id = :u ORDER BY seq"),
                {"u": user},
            )
        ).all()
    assert [tuple(r) for r in rows] == [("GRANT", 7), ("EXPIRY", -7)]
    await assert_reconciled(db)


async def test_the_worker_writes_off_an_expiry_nobody_reads(api, db) -> None:
    """`skill-credits worker`'s loop sweeps expiries each round, well within 60 s."""
    from skill_credits.events.worker import WorkerConfig, run

    user = await api.new_user(0)
    instant = datetime.now(UTC) + timedelta(seconds=0.5)
    await credit(api, user, 3, "GRANT", expires_at=iso(instant))
    stop = asyncio.Event()
    worker = asyncio.create_task(run(db, WorkerConfig(poll_interval=0.1), stop))
    try:
        for _ in range(100):
            await asyncio.sleep(0.1)
            async with db.connect() as conn:
                written = (
                    await conn.execute(
                        text(
                            "SELECT count(*) FROM transactions"
                            " WHERE user_id = :u AND type = 'EXPIRY'"
                        ),
                        {"u": user},
                    )
                ).scalar()
            if written:
                break
    finally:
        stop.set()
        await worker
    assert written == 1
    await assert_reconciled(db)
