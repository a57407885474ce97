"""Faults under load: Redis killed, PostgreSQL stopped, a server worker SIGKILLed.

Each test starts and stops its own servers and sends a bounded concurrent load: clients
charge with an Idempotency-Key and, on a 5xx or a broken connection, retry with the
same key, as a careful client would. Afterwards every 201 a client received must have
its row, no key may have charged twice, and `reconcile` must be clean.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from dataclasses import dataclass, field

import httpx
import pytest

from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from tests.support.databases import connection, create_keys, problems
from tests.support.processes import (
    AppServer,
    PostgresCluster,
    charges_sent_together,
    server_with_own_redis,
)
from tests.support.run import record, run_in_thread, unique

pytestmark = pytest.mark.faults


@dataclass
class Load:
    """Clients that charge until told to stop; a failed attempt is retried with its key."""

    url: str
    token: str
    user: str
    skill: str
    results: list[tuple[str, int, float, str | None]] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    attempts: int = 0

    async def client(self) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=10) as http:
            while not self.stop.is_set():
                key = uuid.uuid4().hex
                while True:  # retry this key until it has an answer that is not a fault
                    self.attempts += 1
                    started = time.monotonic()
                    try:
                        r = await http.post(
                            "/v1/charges",
                            json={"user_id": self.user, "skill": self.skill},
                            headers={
                                "Authorization": f"Bearer {self.token}",
                                "Idempotency-Key": key,
                            },
                        )
                        status, body = r.status_code, r.json()
                    except (httpx.TransportError, ValueError):
                        status, body = 0, {}
                    elapsed = time.monotonic() - started
                    self.results.append((key, status, elapsed, body.get("id")))
                    if status in (201, 402):
                        break
                    if self.stop.is_set() and status != 0 and status < 500:
                        break
                    await asyncio.sleep(0.05)

    async def run(self, clients: int, during) -> None:
        tasks = [asyncio.create_task(self.client()) for _ in range(clients)]
        try:
            await during()
        finally:
            self.stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 60)

    def created(self) -> dict[str, str]:
        return {key: tx for key, status, _, tx in self.results if status == 201}


async def check_ledger(db_url: str, load: Load, start_balance: int) -> dict:
    async with connection(db_url) as conn:
        rows = await conn.fetch(
            "SELECT id::text AS id, idempotency_key, amount FROM transactions"
            " WHERE user_id = $1 AND type = 'CONSUMPTION'",
            load.user,
        )
        credits = await conn.fetchval("SELECT credits FROM users WHERE user_id = $1", load.user)
    by_key = {r["idempotency_key"]: r["id"] for r in rows}
    created = load.created()
    # every 201 a client received has its row, under its key, with its id
    assert all(by_key.get(key) == tx for key, tx in created.items())
    # no key charged twice (the unique constraint), and the balance agrees
    assert len(by_key) == len(rows)
    assert credits == start_balance + sum(r["amount"] for r in rows)
    assert await problems(db_url) == []
    return {"requests": load.attempts, "charged": len(rows), "acknowledged": len(created)}


async def own_postgres(name: str) -> tuple[PostgresCluster, str, str, str]:
    """A PostgreSQL cluster of the test's own, started, with a migrated database ``name``
    and an admin and a service key in it: the cluster, the database's URL, the tokens."""
    pg = PostgresCluster()
    pg.init()
    pg.start()
    db_url = f"{pg.url}/{name}"
    run_in_thread(migrate, Settings(database_url=db_url))
    admin, service = await create_keys(db_url, "admin", "service")
    return pg, db_url, admin, service


async def setup_world(api_url: str, admin_token: str, balance: int, cost: int) -> tuple:
    async with httpx.AsyncClient(base_url=api_url, timeout=10) as http:
        admin = {"Authorization": f"Bearer {admin_token}"}
        skill = unique("FAULT")
        r = await http.post(
            "/v1/admin/skills",
            headers=admin,
            json={"name": skill, "display_name": "f", "cost": cost},
        )
        assert r.status_code == 201, r.text
        user = unique("fault").lower()
        r = await http.post(
            f"/v1/users/{user}/credits", headers=admin, json={"amount": balance, "type": "GRANT"}
        )
        assert r.status_code == 201, r.text
        return skill, user


async def test_redis_killed_mid_load(settings, keys) -> None:
    with server_with_own_redis(settings, workers=2) as (server, redis):
        skill, user = await setup_world(server.url, keys.admin, 10**9, 1)
        load = Load(server.url, keys.service, user, skill)
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            admin = keys.auth("admin")

            async def during():
                await asyncio.sleep(1)
                redis.stop()  # killed
                await asyncio.sleep(0.5)
                assert (await http.get("/readyz")).json() == {"postgres": "up", "redis": "down"}
                r = await http.patch(f"/v1/admin/skills/{skill}", headers=admin, json={"cost": 3})
                assert r.status_code == 200
                await asyncio.sleep(1)
                redis.start()  # back, empty
                await asyncio.sleep(1.5)

            await load.run(8, during)
            statuses = {s for _, s, _, _ in load.results}
            assert statuses == {201}, statuses  # served from PostgreSQL throughout
            r = await http.post(
                "/v1/charges", json={"user_id": user, "skill": skill}, headers=keys.auth("service")
            )
            assert r.json()["unit_cost"] == 3  # the edit made while Redis was down
            assert (await http.get("/readyz")).json()["redis"] == "up"
            hits = (await http.get("/metrics")).text
            assert 'skill_credits_skill_cache_lookups_total{result="hit"}' in hits
        figures = await check_ledger(settings.database_url, load, 10**9)
    record("redis killed", figures)


async def test_postgres_stopped_mid_load(redis_url, redis_prefix) -> None:
    pg, db_url, admin, service = await own_postgres("sc_fault")
    server = AppServer(
        {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}, workers=1
    )
    server.start()
    try:
        skill, user = await setup_world(server.url, admin, 10**9, 2)
        load = Load(server.url, service, user, skill)
        marks: dict[str, float] = {}

        async def during():
            await asyncio.sleep(1)
            marks["stopped"] = time.monotonic()
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(2)
            await asyncio.to_thread(pg.start)
            marks["started"] = time.monotonic()
            # the service recovers by itself within 5 s of PostgreSQL's return
            async with httpx.AsyncClient(base_url=server.url, timeout=5) as http:
                while time.monotonic() - marks["started"] < 5:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.1)
                marks["ready"] = time.monotonic()
            await asyncio.sleep(1.5)

        await load.run(6, during)
        together = await charges_sent_together(server.url)
        assert together > 0, "no charges went in batches: the test did not test them"
        assert marks["ready"] - marks["started"] < 5
        faults = [(s, t) for _, s, t, _ in load.results if s not in (201,)]
        assert faults, "the stop produced no failed request: the test did not test"
        assert {s for s, _ in faults} <= {503}, {s for s, _ in faults}
        assert max(t for _, t in faults) < 2.0  # answered quickly, no hang
        after_return = [s for _, s, _, _ in load.results[-20:]]
        assert after_return.count(201) >= 10  # recovered without a restart
        figures = await check_ledger(db_url, load, 10**9)
        figures["503s"] = len(faults)
        figures["batches of 2 or more"] = together
        record("postgres stopped", figures)
    finally:
        server.stop()
        pg.cleanup()


async def test_worker_sigkilled_mid_load(settings, server_env, keys) -> None:
    server = AppServer(server_env, workers=2)
    server.start()
    try:
        skill, user = await setup_world(server.url, keys.admin, 10**9, 5)
        load = Load(server.url, keys.service, user, skill)
        killed: list[int] = []

        async def during():
            await asyncio.sleep(1)
            workers = await asyncio.to_thread(server.worker_pids)
            os.kill(workers[0], signal.SIGKILL)
            killed.append(workers[0])
            await asyncio.sleep(3)

        await load.run(10, during)
        assert killed
        together = await charges_sent_together(server.url)
        assert together > 0, "no charges went in batches: the test did not test them"
        figures = await check_ledger(settings.database_url, load, 10**9)
        figures["batches of 2 or more"] = together
        figures["workers killed"] = len(killed)
        figures["failed attempts"] = sum(1 for _, s, _, _ in load.results if s != 201)
        record("worker SIGKILL", figures)
    finally:
        server.stop()


async def mixed_request(http: httpx.AsyncClient, n: int, world: dict) -> httpx.Response:
    """Request ``n`` of a round over every route family (the JSON API; both key roles)."""
    skill, user, admin, service = world["skill"], world["user"], world["admin"], world["service"]
    a, s = {"Authorization": f"Bearer {admin}"}, {"Authorization": f"Bearer {service}"}
    match n % 10:
        case 0:
            return await http.post("/v1/charges", json={"user_id": user, "skill": skill}, headers=s)
        case 1:
            return await http.post(
                f"/v1/users/{user}/credits", json={"amount": 5, "type": "PURCHASE"}, headers=s
            )
        case 2:
            return await http.get(f"/v1/users/{user}", headers=s)
        case 3:
            return await http.get(f"/v1/users/{user}/transactions?limit=5", headers=s)
        case 4:
            return await http.get("/v1/skills", headers=s)
        case 5:
            return await http.get("/v1/admin/skills", headers=a)
        case 6:
            cost = 1 + n % 3
            return await http.patch(f"/v1/admin/skills/{skill}", json={"cost": cost}, headers=a)
        case 7:
            r = await http.post("/v1/charges", json={"user_id": user, "skill": skill}, headers=s)
            if r.status_code != 201:
                return r
            return await http.post(f"/v1/transactions/{r.json()['id']}/refund", json={}, headers=a)
        case 8:
            r = await http.post("/v1/holds", json={"user_id": user, "skill": skill}, headers=s)
            if r.status_code != 201:
                return r
            return await http.post(f"/v1/holds/{r.json()['id']}/release", headers=s)
        case _:
            return await http.get("/v1/events?limit=5", headers=a)


async def test_postgres_crash_leaves_no_broken_connection_behind(redis_url, redis_prefix) -> None:
    """PostgreSQL crashes (`-m immediate`) under mixed load on 2 workers and comes back:
    once it answers again, no request on any route fails because of a pooled connection
    that died with the old server (each would fail once, whenever next used)."""
    pg, db_url, admin, service = await own_postgres("sc_crash")
    env = {"DATABASE_URL": db_url, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    server = AppServer(env, workers=2)
    server.start()
    try:
        skill, user = await setup_world(server.url, admin, 10**9, 1)
        world = {"skill": skill, "user": user, "admin": admin, "service": service}
        stop = asyncio.Event()
        during_load: list[int] = []

        async def client(i: int) -> None:
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                n = i
                while not stop.is_set():
                    try:
                        during_load.append((await mixed_request(http, n, world)).status_code)
                    except httpx.TransportError:
                        during_load.append(0)
                    n += 1

        clients = [asyncio.create_task(client(i)) for i in range(10)]
        await asyncio.sleep(2)  # every worker's pools now hold connections of the old server
        stop.set()
        await asyncio.gather(*clients)
        assert set(during_load) <= {200, 201}, set(during_load)
        await asyncio.to_thread(pg.stop, "immediate")  # a crash: no goodbye to any client
        await asyncio.to_thread(pg.start)
        await asyncio.sleep(5)  # the contract: recovered by itself within 5 s of the return
        # 100 requests over every route family, 10 at a time on fresh connections so both
        # workers and many pooled connections answer them
        failed = []
        for round_ in range(10):
            async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
                answers = await asyncio.gather(
                    *(mixed_request(http, round_ * 10 + i, world) for i in range(10))
                )
            failed += [(r.request.url.path, r.status_code, r.text) for r in answers if r.is_error]
        assert failed == [], failed
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as http:
            assert (await http.get("/readyz")).status_code == 200
        record("postgres crashed", {"requests during load": len(during_load), "after": 100})
    finally:
        server.stop()
        pg.cleanup()
