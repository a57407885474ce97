"""The example receiver of examples/recharge_webhook.py, driven by the real service and its
worker: a low balance asks, the worker delivers the signed event, the receiver charges the
(fake) card once and fulfils; a declined card fails, three times suspends; a redelivery
pays once."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import httpx
import pytest
import uvicorn
from examples.recharge_webhook import FakeProcessor, create_app

from skill_credits.events import repository as events_repo
from skill_credits.events.worker import sign
from tests.integration.test_events import start_worker
from tests.support.api import Api
from tests.support.databases import assert_reconciled
from tests.support.processes import AppServer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Receiver:
    """An app served by uvicorn in a thread of the test, on ``port``."""

    def __init__(self, app, port: int) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.server.started
        return self

    def __exit__(self, *_: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def service(server_env):
    with AppServer(server_env, workers=1) as server:
        yield server


@pytest.fixture
async def host(service, keys, db, server_env):
    """The service, its worker, and the example receiver registered as a webhook endpoint
    (its URL first, then the app made with the endpoint's secret)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/webhooks/skill-credits"
    async with db.engine.begin() as conn:
        _, secret = await events_repo.add_endpoint(conn, url)
    processor = FakeProcessor()
    worker = start_worker(server_env)
    try:
        with Receiver(create_app(service.url, keys.service, secret, processor), port):
            async with httpx.AsyncClient(base_url=service.url, timeout=30) as http:
                yield {
                    "api": Api(http, keys),
                    "processor": processor,
                    "url": url,
                    "secret": secret,
                }
    finally:
        worker.terminate()
        worker.wait(10)
        async with db.engine.begin() as conn:
            await events_repo.remove_endpoint(conn, url)


async def until(check, seconds: float = 20.0):
    """``await check()`` until it answers something true; that answer."""
    deadline = time.monotonic() + seconds
    while True:
        found = await check()
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def rule_of(api: Api, user: str) -> dict:
    r = await api.c.get(f"/v1/users/{user}/auto-recharge", headers=api.keys.auth("service"))
    return r.json()


async def requests_of(api: Api, user: str) -> list[dict]:
    r = await api.c.get(f"/v1/users/{user}/recharges", headers=api.keys.auth("service"))
    return r.json()["items"]


async def test_a_low_balance_is_topped_up_through_the_hosts_receiver(host, db) -> None:
    api, processor = host["api"], host["processor"]
    skill = (await api.create_skill(cost=60))["name"]
    user = await api.new_user(100)
    r = await api.c.put(
        f"/v1/users/{user}/auto-recharge",
        json={"threshold": 50, "amount": 200},
        headers=api.keys.auth("service"),
    )
    assert r.status_code == 200 and r.json()["pending"] is None
    assert (await api.charge(user, skill)).status_code == 201  # 40: at or below 50

    async def fulfilled() -> list[dict]:
        return [q for q in await requests_of(api, user) if q["status"] == "fulfilled"]

    [done] = await until(fulfilled)
    assert await api.balance(user) == 240
    [payment] = [p for p in processor.payments.values() if p["customer"] == user]
    assert processor.payments[done["id"]] is payment  # the request id is the payment's key
    assert (payment["cents"], payment["status"], done["reference"]) == (
        200,
        "succeeded",
        payment["id"],
    )
    await assert_reconciled(db)


async def test_a_declined_card_fails_and_three_in_a_row_suspend(host, db) -> None:
    api, processor = host["api"], host["processor"]
    skill = (await api.create_skill(cost=1))["name"]
    user = await api.new_user(10)
    processor.declining.add(user)
    auth = api.keys.auth("service")
    r = await api.c.put(
        f"/v1/users/{user}/auto-recharge", json={"threshold": 50, "amount": 20}, headers=auth
    )
    assert r.json()["pending"] is not None  # low already: asked at once
    for failures in range(1, 4):

        async def failed(n: int = failures) -> bool:
            return (await rule_of(api, user))["consecutive_failures"] == n

        assert await until(failed), failures
        assert (await api.charge(user, skill)).status_code == 201  # asks again, but the third
    rule = await rule_of(api, user)
    assert (rule["status"], rule["pending"]) == ("suspended", None)
    made = await requests_of(api, user)
    assert [q["status"] for q in made] == ["failed"] * 3
    assert all(q["reason"].startswith("card_declined") for q in made)
    assert await api.balance(user) == 7
    await assert_reconciled(db)


async def test_a_redelivered_event_pays_once_and_a_forged_one_is_refused(host, db) -> None:
    """The worker delivers the request; three more copies of the signed event arrive at
    once (a processor's or a network's retries): one payment, one purchase."""
    api, processor = host["api"], host["processor"]
    user = await api.new_user(5)
    auth = api.keys.auth("service")
    r = await api.c.put(
        f"/v1/users/{user}/auto-recharge", json={"threshold": 50, "amount": 30}, headers=auth
    )
    asked = r.json()["pending"]
    event = {
        "id": "00000000-0000-0000-0000-000000000000",
        "type": "balance.recharge_requested",
        "user_id": user,
        "created_at": asked["created_at"],
        "data": asked,
    }
    body = json.dumps(event).encode()
    async with httpx.AsyncClient(timeout=30) as http:
        forged = await http.post(
            host["url"], content=body, headers={"X-Skill-Credits-Signature": "t=1,v1=00"}
        )
        assert forged.status_code == 401
        signature = sign(host["secret"], int(time.time()), body)
        copies = await asyncio.gather(
            *(
                http.post(
                    host["url"], content=body, headers={"X-Skill-Credits-Signature": signature}
                )
                for _ in range(3)
            )
        )
    assert [c.status_code for c in copies] == [200] * 3, [c.text for c in copies]
    assert {c.json()["status"] for c in copies} == {"fulfilled"}

    async def fulfilled() -> bool:
        return (await requests_of(api, user))[0]["status"] == "fulfilled"

    assert await until(fulfilled)
    await asyncio.sleep(1)  # the worker's own delivery, if it came after the copies
    assert [p for p in processor.payments.values() if p["customer"] == user] == [
        processor.payments[asked["id"]]
    ]
    log = (await api.c.get(f"/v1/users/{user}/transactions", headers=auth)).json()["items"]
    assert [t["type"] for t in log].count("PURCHASE") == 1
    assert await api.balance(user) == 35
    await assert_reconciled(db)
