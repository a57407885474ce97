"""Charges, credits, refunds and history against the real PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import json
import re
import time
import types
import uuid

import httpx
import pytest
from sqlalchemy import text

from tests.support.api import Api
from tests.support.databases import assert_reconciled
from tests.support.processes import AppServer, OwnRedis


def via_sqlalchemy(db):
    """``db`` with its hot-path statements run on the SQLAlchemy pool, where a test can
    count them (``before_cursor_execute``)."""
    return types.SimpleNamespace(statements=db.connect, connect=db.connect)


async def test_charge_deducts_current_cost_and_logs_it(api: Api, db) -> None:
    skill = await api.create_skill(cost=7)
    user = await api.new_user(100)
    r = await api.charge(user, skill["name"], units=3, description="3 pages")
    assert r.status_code == 201, r.text
    tx = r.json()
    assert tx["type"] == "CONSUMPTION"
    assert (tx["amount"], tx["balance_after"], tx["units"], tx["unit_cost"]) == (-21, 79, 3, 7)
    assert tx["skill"] == skill["name"] and tx["refund_of"] is None
    assert tx["description"] == "3 pages" and tx["created_at"].endswith("Z")
    assert await api.balance(user) == 79
    got = await api.c.get(f"/v1/transactions/{tx['id']}", headers=api.keys.auth("service"))
    assert got.json() == tx
    await assert_reconciled(db)


async def test_zero_cost_skill_still_writes_a_consumption_row(api: Api) -> None:
    skill = await api.create_skill(cost=0)
    user = await api.new_user(5)
    r = await api.charge(user, skill["name"])
    assert r.status_code == 201 and r.json()["amount"] == 0 and r.json()["balance_after"] == 5
    refund = await api.c.post(
        f"/v1/transactions/{r.json()['id']}/refund", headers=api.keys.auth("service")
    )
    assert refund.status_code == 201 and refund.json()["amount"] == 0


async def test_errors_in_contract_order_skill_then_user_then_balance(api: Api) -> None:
    skill = await api.create_skill(cost=10)
    off = await api.create_skill(cost=10, is_active=False)
    poor = await api.new_user(5)
    r = await api.charge("nobody_here", "NO_SUCH_SKILL")
    assert (r.status_code, r.json()["code"]) == (404, "skill_not_found")
    r = await api.charge("nobody_here", off["name"])
    assert (r.status_code, r.json()["code"]) == (403, "skill_disabled")
    r = await api.charge("nobody_here", skill["name"])
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    r = await api.charge(poor, skill["name"])
    assert r.status_code == 402
    body = r.json()
    assert body["code"] == "insufficient_credits"
    assert (body["credits"], body["required"]) == (5, 10)
    assert r.headers["content-type"].startswith("application/problem+json")
    assert await api.balance(poor) == 5


@pytest.mark.parametrize(("balance", "cost", "requests"), [(1000, 7, 220), (50, 1, 200)])
async def test_concurrent_charges_never_overdraw(api: Api, db, balance, cost, requests) -> None:
    skill = await api.create_skill(cost=cost)
    user = await api.new_user(balance)
    responses = await asyncio.gather(*(api.charge(user, skill["name"]) for _ in range(requests)))
    codes = [r.status_code for r in responses]
    assert codes.count(201) == min(requests, balance // cost)
    assert codes.count(402) == requests - codes.count(201)
    assert await api.balance(user) == balance - cost * codes.count(201)
    afters = sorted(r.json()["balance_after"] for r in responses if r.status_code == 201)
    assert len(set(afters)) == len(afters)  # every charge saw its own balance
    await assert_reconciled(db)


async def test_thirty_concurrent_requests_with_one_key_deduct_once(api: Api, db) -> None:
    """With a head grant (one charge made it), the repeats race in the one statement: the
    unique index stops the losers and the service calls again for the replay."""
    skill = await api.create_skill(cost=3)
    user = await api.new_user(103)
    assert (await api.charge(user, skill["name"])).status_code == 201
    responses = await asyncio.gather(
        *(api.charge(user, skill["name"], key="same-key-30") for _ in range(30))
    )
    assert {r.status_code for r in responses} == {201}
    assert len({r.text for r in responses}) == 1
    replayed = [r.headers.get("Idempotent-Replayed") for r in responses]
    assert replayed.count("true") == 29
    assert await api.balance(user) == 97
    await assert_reconciled(db)


async def test_idempotency_key_rules(api: Api) -> None:
    skill = await api.create_skill(cost=1)
    alice, bob = await api.new_user(10), await api.new_user(10)
    first = await api.charge(alice, skill["name"], key="k")
    again = await api.charge(alice, skill["name"], key="k")
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    other_body = await api.charge(alice, skill["name"], key="k", units=2)
    assert (other_body.status_code, other_body.json()["code"]) == (422, "idempotency_key_reused")
    other_path = await api.c.post(
        f"/v1/users/{alice}/credits",
        json={"amount": 5, "type": "GRANT"},
        headers={**api.keys.auth("service"), "Idempotency-Key": "k"},
    )
    assert other_path.status_code == 422
    # keys belong to a user: bob may use the same key
    assert (await api.charge(bob, skill["name"], key="k")).status_code == 201
    assert await api.balance(alice) == 9 and await api.balance(bob) == 9
    # a failed request stores nothing: the retry is evaluated afresh
    poor = await api.new_user(0)
    await api.credit(poor, 1)
    await api.patch_skill(skill["name"], cost=5)
    assert (await api.charge(poor, skill["name"], key="retry")).status_code == 402
    await api.credit(poor, 10)
    assert (await api.charge(poor, skill["name"], key="retry")).status_code == 201


async def test_idempotent_credits_and_refunds(api: Api, db) -> None:
    user = await api.new_user(0)
    headers = {**api.keys.auth("service"), "Idempotency-Key": "topup-1"}
    body = {"amount": 40, "type": "PURCHASE", "description": "order 17"}
    results = await asyncio.gather(
        *(api.c.post(f"/v1/users/{user}/credits", json=body, headers=headers) for _ in range(10))
    )
    assert {r.status_code for r in results} == {201} and len({r.text for r in results}) == 1
    assert await api.balance(user) == 40
    skill = await api.create_skill(cost=15)
    charge = (await api.charge(user, skill["name"])).json()
    refund_headers = {**api.keys.auth("service"), "Idempotency-Key": "refund-1"}
    url = f"/v1/transactions/{charge['id']}/refund"
    first = await api.c.post(url, json={"description": "tool failed"}, headers=refund_headers)
    assert first.status_code == 201
    again = await api.c.post(url, json={"description": "tool failed"}, headers=refund_headers)
    assert again.status_code == 201 and again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await api.balance(user) == 40
    await assert_reconciled(db)


async def test_refund_rules(api: Api, db) -> None:
    skill = await api.create_skill(cost=4)
    user = await api.new_user(20)
    charge = (await api.charge(user, skill["name"], units=2)).json()
    auth = api.keys.auth("service")
    url = f"/v1/transactions/{charge['id']}/refund"
    results = await asyncio.gather(*(api.c.post(url, headers=auth) for _ in range(12)))
    codes = sorted(r.status_code for r in results)
    assert codes == [201] + [409] * 11
    assert {r.json()["code"] for r in results if r.status_code == 409} == {"already_refunded"}
    refund = next(r.json() for r in results if r.status_code == 201)
    assert (refund["type"], refund["amount"], refund["refund_of"]) == ("REFUND", 8, charge["id"])
    assert refund["balance_after"] == 20
    r = await api.c.post(f"/v1/transactions/{refund['id']}/refund", headers=auth)
    assert (r.status_code, r.json()["code"]) == (409, "not_refundable")
    r = await api.c.post(
        "/v1/transactions/7b0c5d7e-0000-4000-8000-000000000000/refund", headers=auth
    )
    assert (r.status_code, r.json()["code"]) == (404, "transaction_not_found")
    await assert_reconciled(db)


async def test_credits_adjustments_and_overflow(api: Api, db) -> None:
    user = await api.new_user(0)
    admin, service = api.keys.auth("admin"), api.keys.auth("service")
    url = f"/v1/users/{user}/credits"
    r = await api.c.post(url, json={"amount": 10, "type": "PURCHASE"}, headers=service)
    assert r.status_code == 201 and r.json()["balance_after"] == 10
    r = await api.c.post(url, json={"amount": -3, "type": "ADJUSTMENT"}, headers=service)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    r = await api.c.post(url, json={"amount": -11, "type": "ADJUSTMENT"}, headers=admin)
    assert (r.status_code, r.json()["code"], r.json()["required"]) == (
        402,
        "insufficient_credits",
        11,
    )
    r = await api.c.post(url, json={"amount": -10, "type": "ADJUSTMENT"}, headers=admin)
    assert r.status_code == 201 and r.json()["balance_after"] == 0
    r = await api.c.post(
        "/v1/users/ghost_user_x/credits", json={"amount": -1, "type": "ADJUSTMENT"}, headers=admin
    )
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    r = await api.c.post(url, json={"amount": 2**63 - 1, "type": "GRANT"}, headers=admin)
    assert r.status_code == 201
    r = await api.c.post(url, json={"amount": 1, "type": "GRANT"}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (400, "validation_error")
    assert "amount" in r.json()["detail"]
    assert await api.balance(user) == 2**63 - 1
    await assert_reconciled(db)


async def test_history_is_newest_first_with_keyset_pages(api: Api) -> None:
    skill = await api.create_skill(cost=1)
    user = await api.new_user(100)
    for _ in range(11):
        assert (await api.charge(user, skill["name"])).status_code == 201
    auth = api.keys.auth("service")
    seen, cursor = [], None
    while True:
        params = {"limit": 5} | ({"cursor": cursor} if cursor else {})
        page = await api.c.get(f"/v1/users/{user}/transactions", params=params, headers=auth)
        assert page.status_code == 200, page.text
        seen += page.json()["items"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 12
    assert [t["balance_after"] for t in seen] == list(range(89, 101))
    only = await api.c.get(f"/v1/users/{user}/transactions", params={"type": "GRANT"}, headers=auth)
    assert [t["type"] for t in only.json()["items"]] == ["GRANT"]
    missing = await api.c.get("/v1/users/nobody_at_all/transactions", headers=auth)
    assert (missing.status_code, missing.json()["code"]) == (404, "user_not_found")
    user_view = (await api.c.get(f"/v1/users/{user}", headers=auth)).json()
    assert user_view["credits"] == user_view["available"] == 89 and user_view["reserved"] == 0


async def test_a_long_history_page_uses_the_users_index(db) -> None:
    """A user who owns most of the log, all of it older than other users' rows: the page
    must walk (user_id, seq DESC), not filter the whole log in seq order."""
    from sqlalchemy import text

    from skill_credits.ledger.repository import page

    user, others = f"deep_{uuid.uuid4().hex[:8]}", f"newer_{uuid.uuid4().hex[:8]}"
    async with db.engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO users (user_id, credits, log_seq) VALUES (:u, 30000, 30000)"),
            {"u": user},
        )
        await conn.execute(
            text(
                "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
                " SELECT k, :u, 'GRANT', 1, k FROM generate_series(1, 30000) k ORDER BY k"
            ),
            {"u": user},
        )
        # newer rows of 200 other users, each a GRANT of 1 that its balance shows
        await conn.execute(
            text(
                "INSERT INTO users (user_id, credits, log_seq)"
                " SELECT :o || g, 1, 1 FROM generate_series(1, 200) g"
            ),
            {"o": others},
        )
        await conn.execute(
            text(
                "INSERT INTO transactions (seq, user_id, type, amount, balance_after)"
                " SELECT 1, :o || g, 'GRANT', 1, 1 FROM generate_series(1, 200) g"
            ),
            {"o": others},
        )
        # each balance is one grant, as the upgrade to grants made it
        await conn.execute(
            text(
                "INSERT INTO grants (user_id, category, amount, remaining)"
                " SELECT user_id, 'paid', credits, credits FROM users"
                " WHERE user_id = :u OR user_id LIKE :o || '%'"
            ),
            {"u": user, "o": others},
        )
    async with db.autocommit.connect() as conn:
        await conn.execute(text("ANALYZE transactions"))
        await conn.execute(text("SET plan_cache_mode = force_custom_plan"))
        for where in ("", " AND seq < 1000000000"):
            plan = (
                await conn.execute(
                    text(
                        "EXPLAIN (FORMAT JSON) SELECT id FROM transactions"
                        f" WHERE user_id = :u{where} ORDER BY seq DESC LIMIT 51"
                    ),
                    {"u": user},
                )
            ).scalar()
            assert "transactions_user_seq" in json.dumps(plan), plan
        await conn.execute(text("RESET plan_cache_mode"))
        items, cursor = await page(conn, user, 50, None, None)
    assert [t.balance_after for t in items] == list(range(30000, 29950, -1)) and cursor
    await assert_reconciled(db)


async def test_a_refused_charge_is_one_round_trip(api: Api, db, settings) -> None:
    """Under a hot user who ran dry, every refusal must stay cheap: the charge function
    answers why it wrote nothing (no query to explain it, no auth re-check, no separate
    skill and user reads)."""
    from sqlalchemy import event

    from skill_credits.ledger import service
    from skill_credits.ledger.schemas import ChargeIn
    from skill_credits.skills.cache import SkillCache, create_redis

    skill = await api.create_skill(cost=5)
    user = await api.new_user(3)
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    cache = SkillCache(create_redis(settings.redis_url, 0.2), settings.redis_prefix)
    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        key_id = api.keys.service.split("_")[1]
        data = ChargeIn(user_id=user, skill=skill["name"])
        for _ in range(3):
            statements.clear()
            with pytest.raises(service.ApiError) as refused:
                await service.charge(via_sqlalchemy(db), cache, data, None, b"h", api_key_id=key_id)
            assert refused.value.code == "insufficient_credits"
            assert refused.value.extra["required"] == 5
            assert len(statements) == 1, statements
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
        await cache.close()


async def test_charges_beyond_the_pool_answer_503_in_time_and_change_nothing(
    server_env, keys, db
) -> None:
    """Every hot-path connection stuck behind a row lock: the next charge waits at most
    the pool timeout, answers 503, and writes nothing; the stuck ones finish after."""
    pool_size = 2
    # the default wait for a connection (1.9 s), which the cluster suites raise; each charge
    # its own call (on a busy machine two batched ones could share one connection, leaving
    # the late one a connection that waits on the lock instead of the pool)
    env = server_env | {
        "DB_FAST_POOL_SIZE": str(pool_size),
        "DB_POOL_TIMEOUT": "1.9",
        "CHARGE_BATCH_MAX": "1",
    }
    server = AppServer(env, workers=1)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            api = Api(http, keys)
            skill = (await api.create_skill(cost=1))["name"]
            user = await api.new_user(100)
            async with db.engine.connect() as locker:
                await locker.execute(
                    text("SELECT 1 FROM users WHERE user_id = :u FOR UPDATE"), {"u": user}
                )
                stuck = [asyncio.create_task(api.charge(user, skill)) for _ in range(pool_size)]
                await asyncio.sleep(0.5)  # they hold every connection, waiting on the lock
                started = time.monotonic()
                late = await api.charge(user, skill)
                waited = time.monotonic() - started
                assert (late.status_code, late.json()["code"]) == (503, "service_unavailable")
                assert waited < 2.5, waited
                await locker.rollback()
            assert [r.status_code for r in await asyncio.gather(*stuck)] == [201] * pool_size
            balance = await http.get(f"/v1/users/{user}", headers=keys.auth("service"))
            assert balance.json()["credits"] == 100 - pool_size
    finally:
        server.stop()
    await assert_reconciled(db)


async def test_a_charge_that_joins_a_read_sent_before_an_edit_pays_the_new_cost(
    api: Api, db, keys
) -> None:
    """A read of the skill is in flight (its Redis holds version 1 and is paused); the cost
    is edited; a charge that begins after the edit answered joins that read and gets
    version 1 from it. The statement refuses the replaced price and it pays the new one.
    Real PostgreSQL and a Redis of the test's own (so its command counts are this test's)."""
    import msgspec

    from skill_credits.ledger import service
    from skill_credits.ledger.schemas import ChargeIn
    from skill_credits.skills.schemas import Skill

    skill = await api.create_skill(cost=10)
    user = await api.new_user(1000)
    key_id = keys.service.split("_")[1]

    async with OwnRedis(timeout=5.0, remember=0) as own:
        cache = own.cache

        def charge():
            data = ChargeIn(user_id=user, skill=skill["name"])
            return service.charge(db, cache, data, None, None, api_key_id=key_id)

        await cache.put(msgspec.convert(skill, Skill))  # Redis holds version 1, cost 10
        hget_before, evalsha_before = await own.calls("hget"), await own.calls("evalsha")
        own.server.pause()
        before_edit = asyncio.create_task(charge())  # its HGET is sent, and hangs
        await asyncio.sleep(0.2)
        await api.patch_skill(skill["name"], cost=20)  # the edit has answered
        after_edit = asyncio.create_task(charge())  # joins the read sent before the edit
        await asyncio.sleep(0.2)
        own.server.resume()
        first, second = await asyncio.wait_for(asyncio.gather(before_edit, after_edit), 10)
        hget, evalsha = await own.calls("hget"), await own.calls("evalsha")
    assert second.transaction.unit_cost == 20  # the promise of the edit
    assert first.transaction.unit_cost == 20  # the statement ran after the edit, too
    assert (cache.hits, cache.misses) == (2, 0)  # both read version 1 ...
    assert (hget - hget_before) - (evalsha - evalsha_before) == 1  # ... from one HGET
    assert await api.balance(user) == 1000 - 40


async def test_a_charge_whose_worker_remembers_a_replaced_version_pays_the_new_cost(
    api: Api, db, keys
) -> None:
    """A worker remembers version 1 of a skill (no Redis read for a while); the cost is
    edited; its next charge is refused at version 1 by the statement and pays the new
    cost, and the worker remembers the new version: the charge after it is one statement.
    Real PostgreSQL and a Redis of the test's own, which no charge here asks."""
    import msgspec
    from sqlalchemy import event

    from skill_credits.ledger import service
    from skill_credits.ledger.schemas import ChargeIn
    from skill_credits.skills.schemas import Skill

    skill = await api.create_skill(cost=10)
    user = await api.new_user(1000)
    key_id = keys.service.split("_")[1]
    statements: list[str] = []

    def count(conn, cursor, statement, *args) -> None:
        statements.append(statement)

    async def hgets() -> int:  # sent by a read (the put's script runs one of its own)
        return await own.calls("hget") - await own.calls("evalsha")

    def charge():
        data = ChargeIn(user_id=user, skill=skill["name"])
        return service.charge(via_sqlalchemy(db), cache, data, None, None, api_key_id=key_id)

    event.listen(db.engine.sync_engine, "before_cursor_execute", count)
    try:
        async with OwnRedis(timeout=1.0, remember=3600) as own:
            cache = own.cache
            await cache.put(msgspec.convert(skill, Skill))  # remembered: version 1, cost 10
            hgets_before = await hgets()
            assert (await charge()).transaction.unit_cost == 10
            await api.patch_skill(skill["name"], cost=20)  # the edit has answered
            statements.clear()
            assert (await charge()).transaction.unit_cost == 20  # the promise of the edit
            assert len(statements) == 2  # refused at version 1 (with version 2), charged at 2
            assert (await cache.get(skill["name"])).version == 2
            statements.clear()
            assert (await charge()).transaction.unit_cost == 20
            assert len(statements) == 1
            assert await hgets() == hgets_before  # all of it without reading Redis
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", count)
    assert await api.balance(user) == 1000 - 50


@pytest.mark.one_server
async def test_idempotency_key_lookups_use_the_partial_index(db) -> None:
    """The key's unique index holds keyed rows only (migration 0004); the ledger
    functions' replay lookup (sc_keyed) must still be able to use it when PostgreSQL plans
    it once for any parameters, as it does for a function's statements."""
    async with db.autocommit.connect() as conn:
        lookup = (
            await conn.execute(text("SELECT prosrc FROM pg_proc WHERE proname = 'sc_keyed'"))
        ).scalar()
        (select,) = re.findall(r"SELECT \* INTO t (FROM transactions WHERE [^;]*);", lookup)
        query = "SELECT * " + select.replace("p_user", "$1").replace("p_key", "$2")
        await conn.execute(text("SET plan_cache_mode = force_generic_plan"))
        await conn.execute(text("SET enable_seqscan = off"))  # a small test table: "can use"
        try:
            await conn.execute(text(f"PREPARE keyed(text, text) AS {query}"))
            plan = "\n".join(
                row[0] for row in await conn.execute(text("EXPLAIN EXECUTE keyed('u', 'k')"))
            )
            assert "transactions_idempotency" in plan, plan
        finally:
            await conn.execute(text("DEALLOCATE keyed"))
            await conn.execute(text("RESET ALL"))
