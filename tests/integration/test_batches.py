"""Charges in batches (ledger/batch.py, sc_charge_batch): each charge keeps its own answer
and every promise; a batch answers only after its commit."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import httpx
import pytest

from skill_credits.db import Database
from skill_credits.ledger import repository as repo
from skill_credits.ledger.batch import Batches, ChargeBatcher
from tests.support.api import Api
from tests.support.processes import AppServer, charges_sent_together
from tests.support.run import unique


def charges_of(db: Database) -> ChargeBatcher:
    """A worker's charge batches: 8 at most a call, one call out at a time."""
    return ChargeBatcher(db, max_items=8, slots=1, wait=5)


def params(user: str, skill: str, *, key: str | None = None, description: str | None = None):
    return {
        "user_id": user,
        "skill": skill,
        "version": None,
        "units": 1,
        "description": description,
        "key": key,
        "hash": b"h" if key else None,
        "api_key_id": None,
        "member": None,
        "limited": False,
    }


async def balance(db: Database, user: str) -> int:
    async with db.connect() as conn:
        row = await conn.exec_driver_sql(f"SELECT credits FROM users WHERE user_id = '{user}'")
        return row.scalar()


async def test_concurrent_charges_go_in_batches_each_with_its_own_answer(server_env, keys) -> None:
    server = AppServer(server_env, workers=1)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            api = Api(http, keys)
            skill = (await api.create_skill(cost=2))["name"]
            users = [await api.new_user(100) for _ in range(8)]
            poor = await api.new_user(1)
            before = await charges_sent_together(server.url)
            requests = [(users[i % 8], f"req-{i}") for i in range(96)]
            answers = await asyncio.gather(
                *(api.charge(user, skill, description=tag) for user, tag in requests),
                api.charge(poor, skill),  # refused in some batch, failing no other charge
                api.charge(users[0], unique("NOPE")),
            )
            for (user, tag), answer in zip(requests, answers, strict=False):
                assert answer.status_code == 201, answer.text
                body = answer.json()
                assert (body["user_id"], body["description"], body["amount"]) == (user, tag, -2)
            assert answers[-2].status_code == 402 and answers[-1].status_code == 404
            assert sorted(await asyncio.gather(*(api.balance(u) for u in users))) == [76] * 8
            # each user's answers are its balances one charge after another
            for user in users:
                after = [
                    a.json()["balance_after"] for a in answers[:96] if a.json()["user_id"] == user
                ]
                assert sorted(after) == list(range(76, 100, 2))
            assert await charges_sent_together(server.url) > before  # batches happened
    finally:
        server.stop()


async def test_holds_and_captures_go_in_batches_each_with_its_own_answer(server_env, keys) -> None:
    server = AppServer(server_env, workers=1)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            api = Api(http, keys)
            auth = keys.auth("service")
            skill = (await api.create_skill(cost=2))["name"]
            users = [await api.new_user(100) for _ in range(6)]
            asks = [(users[i % 6], f"capture-{i}", 1 + i % 7) for i in range(60)]
            held = await asyncio.gather(
                *(
                    http.post(
                        "/v1/holds", json={"user_id": u, "skill": skill, "units": n}, headers=auth
                    )
                    for u, _, n in asks
                )
            )
            for (user, _, units), answer in zip(asks, held, strict=True):
                assert answer.status_code == 201, answer.text
                body = answer.json()
                assert (body["user_id"], body["units"], body["amount"]) == (user, units, 2 * units)
            # capture each for one unit: each answer is its own hold's charge
            captured = await asyncio.gather(
                *(
                    http.post(
                        f"/v1/holds/{h.json()['id']}/capture",
                        json={"units": 1, "description": tag},
                        headers=auth,
                    )
                    for (_, tag, _), h in zip(asks, held, strict=True)
                )
            )
            for (user, tag, _), answer in zip(asks, captured, strict=True):
                assert answer.status_code == 201, answer.text
                body = answer.json()
                assert (body["user_id"], body["description"], body["amount"]) == (user, tag, -2)
            assert sorted(await asyncio.gather(*(api.balance(u) for u in users))) == [80] * 6
            assert await charges_sent_together(server.url, "hold") > 0
            assert await charges_sent_together(server.url, "capture") > 0
    finally:
        server.stop()


async def test_one_key_twice_in_one_batch_charges_once(api: Api, db: Database) -> None:
    skill = (await api.create_skill(cost=3))["name"]
    user = await api.new_user(10)
    key = uuid.uuid4().hex
    async with db.statements() as conn:
        rows = await repo.charge_batch(conn, [params(user, skill, key=key)] * 2)
    assert [r.outcome for r in rows] == ["written", "replay"]
    assert rows[0].id == rows[1].id
    assert await balance(db, user) == 7


async def hold_lock(pg: str, user: str) -> asyncpg.Connection:
    """A connection whose open transaction holds ``user``'s row lock."""
    conn = await asyncpg.connect(pg)
    await conn.execute("BEGIN")
    await conn.execute("SELECT 1 FROM users WHERE user_id = $1 FOR UPDATE", user)
    return conn


@pytest.fixture
def pg(settings) -> str:
    return settings.asyncpg_dsn


async def test_no_charge_is_answered_before_its_batch_commits(api: Api, db: Database, pg) -> None:
    """A batch of two: the first user's charge is written, the second waits for a lock.
    The first is not answered (and not visible) until the whole batch commits."""
    skill = (await api.create_skill(cost=1))["name"]
    first, last = "a" + unique("u").lower(), "z" + unique("u").lower()
    for user in (first, last):
        await api.credit(user, 10)
    batcher = charges_of(db)
    blocker = await hold_lock(pg, last)
    try:
        mine = asyncio.create_task(batcher.write(params(first, skill)))
        theirs = asyncio.create_task(batcher.write(params(last, skill)))
        await asyncio.sleep(0.5)
        assert batcher.sizes == {2: 1}  # one call with both
        assert not mine.done() and not theirs.done()
        assert await balance(db, first) == 10  # written in the batch, not committed
    finally:
        await blocker.execute("COMMIT")
        await blocker.close()
    rows = await asyncio.gather(mine, theirs)
    assert [(r.outcome, r.balance_after) for r in rows] == [("written", 9), ("written", 9)]
    assert await balance(db, first) == 9


async def test_a_batch_that_fails_on_a_key_writes_nothing_and_runs_alone(
    api: Api, client, db: Database, pg
) -> None:
    """Another transaction commits a charge with key K while a batch with K waits for its
    user: the batch fails on the unique index and nothing of it is written; the service
    runs each of its charges again alone, and each is answered as if it had been alone."""
    from skill_credits.ledger import service
    from skill_credits.ledger.schemas import ChargeIn

    skill = (await api.create_skill(cost=1))["name"]
    user = "z" + unique("u").lower()
    shards = await db.shard_map()  # on Citus, a batch holds users of one node
    other = next(
        name
        for name in ("a" + unique("u").lower() for _ in range(1000))
        if shards is None or shards.node_of(name) == shards.node_of(user)
    )
    for u in (user, other):
        await api.credit(u, 10)
    key = uuid.uuid4().hex
    racer = await asyncpg.connect(pg)
    await racer.execute("BEGIN")
    first = await racer.fetchrow(
        "SELECT * FROM sc_charge($1, $2, NULL, 1, NULL, $3, $4, NULL)", user, skill, key, b"h"
    )
    batches = Batches.of(db, max_items=8, slots=1, wait=5)
    batcher = batches.charges
    cache = client.app.state.cache
    await cache.get(skill)  # both charges find the price at once and arrive together

    def charge(who: str, key: str | None):
        data = ChargeIn(user_id=who, skill=skill)
        return service.charge(db, cache, data, key, b"h", api_key_id=None, batches=batches)

    try:
        racing = [asyncio.create_task(charge(other, None)), asyncio.create_task(charge(user, key))]
        await asyncio.sleep(0.5)  # the batch: `other` charged, K waiting for `user`
        assert batcher.sizes == {2: 1}
        assert await balance(db, other) == 10
    finally:
        await racer.execute("COMMIT")
        await racer.close()
    mine, theirs = await asyncio.gather(*racing)
    assert batcher.sizes == {2: 1}  # the two ran again alone, not in the batcher
    assert (mine.replayed, mine.transaction.balance_after) == (False, 9)
    assert (theirs.replayed, theirs.transaction.id) == (True, first["id"])
    assert await balance(db, other) == 9 and await balance(db, user) == 9


async def test_refusals_and_replays_in_a_batch_fail_no_other(api: Api) -> None:
    skill = (await api.create_skill(cost=1))["name"]
    user, other = "z" + unique("u").lower(), "a" + unique("u").lower()
    for u in (user, other):
        await api.credit(u, 10)
    key = uuid.uuid4().hex
    original = await api.charge(user, skill, key=key)
    assert original.status_code == 201
    again = await asyncio.gather(
        api.charge(other, skill),
        api.charge(user, skill, key=key),
        api.charge(user, skill, key=key),
        api.charge(other, unique("NOPE")),
    )
    assert [a.status_code for a in again] == [201, 201, 201, 404]
    assert again[1].json()["id"] == again[2].json()["id"] == original.json()["id"]
    assert again[1].headers.get("Idempotent-Replayed") == "true"
    assert await api.balance(user) == 9 and await api.balance(other) == 9
