"""Low-balance and usage events: the outbox, and its delivery by `skill-credits worker`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import text

from skill_credits.events import repository as events_repo
from skill_credits.events.worker import WorkerConfig, backoff, verify
from skill_credits.pagination import encode_cursor
from tests.support.api import Api


async def events_of(api: Api, user: str) -> list[dict]:
    r = await api.c.get("/v1/events", params={"user_id": user}, headers=api.keys.auth("service"))
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def test_balance_events_are_written_with_the_change(api: Api) -> None:
    skill = await api.create_skill(cost=30)
    user = await api.new_user(100)
    auth = api.keys.auth("service")
    r = await api.c.put(
        f"/v1/users/{user}/low-balance-threshold", json={"low_balance_threshold": 50}, headers=auth
    )
    assert r.status_code == 200 and r.json()["low_balance_threshold"] == 50
    assert (await api.charge(user, skill["name"])).status_code == 201  # 70: above
    assert await events_of(api, user) == []
    assert (await api.charge(user, skill["name"])).status_code == 201  # 40: crosses 50
    assert [e["type"] for e in await events_of(api, user)] == ["balance.low"]
    assert (await api.charge(user, skill["name"], units=2)).status_code == 402  # no change
    assert (await api.charge(user, skill["name"])).status_code == 201  # 10: still low
    await api.patch_skill(skill["name"], cost=10)
    assert (await api.charge(user, skill["name"])).status_code == 201  # 0: depleted
    await api.credit(user, 80)  # 80: recovered
    events = await events_of(api, user)
    assert [e["type"] for e in events] == ["balance.recovered", "balance.depleted", "balance.low"]
    low = events[-1]
    assert low["data"] == {"user_id": user, "credits": 40, "previous_credits": 70, "threshold": 50}
    assert low["user_id"] == user and low["created_at"].endswith("Z")
    changed = (
        await api.c.get(
            "/v1/events", params={"type": "skill.changed"}, headers=api.keys.auth("admin")
        )
    ).json()["items"]
    mine = [e for e in changed if e["data"]["name"] == skill["name"]]
    assert [e["data"]["version"] for e in mine] == [2, 1]
    assert mine[0]["data"]["changes"] == {"cost": [30, 10]}
    # errors
    r = await api.c.put(
        "/v1/users/nobody_like_this/low-balance-threshold",
        json={"low_balance_threshold": 1},
        headers=auth,
    )
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    for body in [{"low_balance_threshold": -1}, {"low_balance_threshold": "5"}, {}]:
        r = await api.c.put(f"/v1/users/{user}/low-balance-threshold", json=body, headers=auth)
        assert r.status_code == 400, body
    for params in [{"type": "nope"}, {"cursor": "!!"}, {"limit": 0}, {"user_id": "a b"}]:
        r = await api.c.get("/v1/events", params=params, headers=auth)
        assert r.status_code == 400, params


async def test_the_feed_pages_every_event_once_newest_first(api: Api, db) -> None:
    """Newest first by the instant each was written, over every user (on Citus they sit on
    different nodes, each numbering its events from its own range) and the catalogue; a
    cursor of the former order (seq alone) still pages on."""
    skill = await api.create_skill(cost=3)
    users = [await api.new_user(3) for _ in range(16)]
    for user in users:
        assert (await api.charge(user, skill["name"])).status_code == 201  # balance.depleted
    await api.patch_skill(skill["name"], cost=4)  # skill.changed
    admin = api.keys.auth("admin")
    seen: list[dict] = []
    cursor = None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        r = await api.c.get("/v1/events", params=params, headers=admin)
        assert r.status_code == 200, r.text
        seen += r.json()["items"]
        if (cursor := r.json()["next_cursor"]) is None:
            break
    ids = [e["id"] for e in seen]
    assert len(ids) == len(set(ids))
    instants = [datetime.fromisoformat(e["created_at"]) for e in seen]
    assert instants == sorted(instants, reverse=True)
    mine = [e for e in seen if e["user_id"] in users]
    assert sorted(e["user_id"] for e in mine) == sorted(users)
    assert [e["user_id"] for e in mine] == users[::-1]
    assert any(e["data"].get("name") == skill["name"] for e in seen)
    async with db.connect() as conn:
        seq = (
            await conn.execute(
                text("SELECT seq FROM events WHERE id = CAST(:id AS uuid)"), {"id": mine[8]["id"]}
            )
        ).scalar_one()
    r = await api.c.get(
        "/v1/events", params={"limit": 200, "cursor": encode_cursor(seq)}, headers=admin
    )
    assert r.status_code == 200, r.text
    rest = [e["id"] for e in r.json()["items"]]
    start = ids.index(mine[8]["id"]) + 1
    assert rest == ids[start : start + 200]


async def test_a_service_key_sees_nothing_an_admin_route_hides(api: Api) -> None:
    """skill.changed names admin keys (history's ``actor``) and inactive skills, which
    only admin routes show: a service key gets the balance events alone."""
    hidden = await api.create_skill(cost=3)
    user = await api.new_user(3)
    assert (await api.charge(user, hidden["name"])).status_code == 201  # balance.depleted
    await api.patch_skill(hidden["name"], is_active=False)
    service, admin = api.keys.auth("service"), api.keys.auth("admin")
    everything = (await api.c.get("/v1/events", params={"limit": 200}, headers=admin)).json()
    assert any(e["data"].get("name") == hidden["name"] for e in everything["items"])
    seen = (await api.c.get("/v1/events", params={"limit": 200}, headers=service)).json()
    assert user in [e["user_id"] for e in seen["items"]]
    assert all(e["type"].startswith("balance.") for e in seen["items"])
    assert api.keys.admin_name not in str(seen) and hidden["name"] not in str(seen)
    r = await api.c.get("/v1/events", params={"type": "skill.changed"}, headers=service)
    assert (r.status_code, r.json()["code"]) == (403, "forbidden")
    # bad input is still 400 first, as everywhere
    r = await api.c.get(
        "/v1/events", params={"type": "skill.changed", "cursor": "!"}, headers=service
    )
    assert r.status_code == 400


def test_backoff_grows_and_gives_up() -> None:
    config = WorkerConfig(max_attempts=4, backoff_base=1.0)
    assert [backoff(config, n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, None]


class Receiver:
    """A local webhook receiver. ``fail`` decides each answer: (event id, nth try) -> status."""

    def __init__(self, secret_holder: dict, fail=lambda event_id, nth: 200, sleep_first=0.0):
        self.seen: list[tuple[str, bool]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                event_id = self.headers["X-Skill-Credits-Event-Id"]
                valid = (
                    verify(secret_holder["secret"], self.headers["X-Skill-Credits-Signature"], body)
                    and json.loads(body)["id"] == event_id
                )
                with receiver.lock:
                    nth = sum(1 for e, _ in receiver.seen if e == event_id) + 1
                    receiver.seen.append((event_id, valid))
                if nth == 1 and sleep_first:
                    time.sleep(sleep_first)
                status = fail(event_id, nth)
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def ids(self) -> list[str]:
        with self.lock:
            return [e for e, _ in self.seen]

    def close(self) -> None:
        self.server.shutdown()


def start_worker(server_env: dict) -> subprocess.Popen:
    env = {
        **os.environ,
        **server_env,
        "WEBHOOK_BACKOFF_SECONDS": "0.05",
        "WEBHOOK_MAX_ATTEMPTS": "4",
        "WEBHOOK_POLL_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "skill_credits.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def deliveries(db, endpoint_url: str) -> list:
    async with db.autocommit.connect() as conn:
        return (
            await conn.execute(
                text(
                    "SELECT d.event_id::text AS event_id, d.status, d.attempts FROM ("
                    "  SELECT event_id, endpoint_id, status, attempts FROM event_deliveries"
                    "  UNION ALL"
                    "  SELECT event_id, endpoint_id, status, attempts FROM skill_event_deliveries"
                    ") d JOIN webhook_endpoints w ON w.id = d.endpoint_id"
                    " WHERE w.url = :url"
                ),
                {"url": endpoint_url},
            )
        ).all()


@pytest.fixture
async def endpoint(db):
    """Registers a receiver as an endpoint; removes it afterwards."""
    made = []

    async def make(**kwargs) -> Receiver:
        holder: dict = {}
        receiver = Receiver(holder, **kwargs)
        async with db.engine.begin() as conn:
            _, holder["secret"] = await events_repo.add_endpoint(conn, receiver.url)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        async with db.engine.begin() as conn:
            await events_repo.remove_endpoint(conn, receiver.url)
        receiver.close()


async def make_events(api: Api, n_users: int) -> None:
    """Each user: threshold 5, then a charge to 0 -> balance.low and balance.depleted."""
    skill = await api.create_skill(cost=10)  # also a skill.changed event
    for _ in range(n_users):
        user = await api.new_user(10)
        await api.c.put(
            f"/v1/users/{user}/low-balance-threshold",
            json={"low_balance_threshold": 5},
            headers=api.keys.auth("service"),
        )
        assert (await api.charge(user, skill["name"])).status_code == 201


async def wait_for(db, url: str, check, within: float = 20.0) -> list:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        rows = await deliveries(db, url)
        if rows and check(rows):
            return rows
        await asyncio.sleep(0.1)
    raise AssertionError(f"deliveries did not settle: {await deliveries(db, url)}")


async def test_healthy_receiver_gets_each_event_exactly_once(api, db, endpoint, server_env) -> None:
    receiver = await endpoint()
    await make_events(api, 5)
    worker = start_worker(server_env)
    try:
        rows = await wait_for(db, receiver.url, lambda rs: all(r.status == "delivered" for r in rs))
        assert len(rows) == 11  # 1 skill.changed + 5 x (low, depleted)
        await asyncio.sleep(0.5)
        ids = receiver.ids()
        assert sorted(ids) == sorted(r.event_id for r in rows)  # each once, none twice
        assert all(valid for _, valid in receiver.seen)
        assert {r.attempts for r in rows} == {1}
    finally:
        worker.kill()
        worker.wait()


async def test_failing_receivers_are_retried_then_dead_lettered(
    api, db, endpoint, server_env
) -> None:
    flaky = await endpoint(fail=lambda event_id, nth: 500 if nth <= 2 else 204)
    broken = await endpoint(fail=lambda event_id, nth: 503)
    await make_events(api, 1)
    worker = start_worker(server_env)
    try:
        rows = await wait_for(db, flaky.url, lambda rs: all(r.status == "delivered" for r in rs))
        assert {r.attempts for r in rows} == {3}
        dead = await wait_for(db, broken.url, lambda rs: all(r.status == "dead" for r in rs))
        assert {r.attempts for r in dead} == {4} and len(dead) == 3
        assert len(broken.ids()) == 3 * 4
    finally:
        worker.kill()
        worker.wait()


async def test_worker_killed_mid_delivery_loses_nothing(api, db, endpoint, server_env) -> None:
    slow = await endpoint(sleep_first=3.0)
    await make_events(api, 2)
    worker = start_worker(server_env)
    try:
        for _ in range(600):  # the first request is in flight (a loaded machine: 30 s)
            if slow.ids():
                break
            await asyncio.sleep(0.05)
        assert slow.ids(), "the worker made no delivery within 30 s"  # the first is in flight
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert all(r.status == "pending" for r in await deliveries(db, slow.url))
        worker = start_worker(server_env)
        rows = await wait_for(db, slow.url, lambda rs: all(r.status == "delivered" for r in rs))
        assert len(rows) == 5
        assert set(slow.ids()) == {r.event_id for r in rows}  # at least once, none lost
        assert len(slow.ids()) > len(rows)  # the interrupted one came again: de-dup by id
    finally:
        worker.kill()
        worker.wait()
