"""On a Citus cluster (TEST_SERVERS=citus): every write about one user runs on the node
that holds the user, in one hop, with no two-phase commit; batches go by node; the ids of
transactions and holds lead to their node; the schema is distributed and stays so.

"What the nodes run" is read from each node's own log: the run's database logs every
statement it receives (``log_statement = all``, for that database only), and each node's log
is read over SQL (``pg_current_logfile``, the logging collector that
scripts/citus-cluster.sh turns on). A two-phase commit shows as ``PREPARE TRANSACTION`` on
the nodes; a query on another node's shards shows in that node's log.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from skill_credits.app import create_app
from skill_credits.db import Database
from skill_credits.db.shards import ShardMap, user_hash
from skill_credits.ledger.batch import ChargeBatcher
from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from tests.support import servers
from tests.support.api import Api, Keys
from tests.support.databases import (
    assert_reconciled,
    connection,
    create_citus_database,
    create_keys,
    drop_databases,
    nodes,
)
from tests.support.processes import AppServer
from tests.support.run import run_in_thread

pytestmark = pytest.mark.skipif(not servers.citus(), reason="needs TEST_SERVERS=citus")

# What a node logs of a statement it received, and the marks of a two-phase commit.
_STATEMENT = re.compile(r"db=(?P<db>\S+) LOG:  (?:statement|execute [^:]*): (?P<sql>.*)")
_TWO_PHASE = ("PREPARE TRANSACTION", "COMMIT PREPARED")
# The ledger's own statements (not the maintenance daemon's): its functions, its shards.
_LEDGER = re.compile(r"\bsc_\w+\(|\b(users|transactions|grants|holds|limits|events)_\d{6,}\b")


@dataclass
class Node:
    url: str  # server URL
    name: str  # host:port, as pg_dist_node names it
    logfile: str
    offset: int = 0


class Logs:
    """Each node's log, read from where the last ``mark`` left it."""

    def __init__(self, database: str, nodes: list[Node]) -> None:
        self.database = database
        self.nodes = nodes

    async def _size(self, conn: asyncpg.Connection, node: Node) -> int:
        return await conn.fetchval("SELECT size FROM pg_stat_file($1)", node.logfile)

    async def mark(self) -> None:
        for node in self.nodes:
            async with connection(f"{node.url}/{self.database}") as conn:
                node.offset = await self._size(conn, node)

    async def since_mark(self) -> dict[str, list[str]]:
        """The statements each node received since ``mark``, by node (host:port)."""
        await asyncio.sleep(0.3)  # the logging collector writes what it was sent
        found: dict[str, list[str]] = {}
        for node in self.nodes:
            async with connection(f"{node.url}/{self.database}") as conn:
                size = await self._size(conn, node)
                chunk = await conn.fetchval(
                    "SELECT pg_read_file($1, $2, $3)", node.logfile, node.offset, size - node.offset
                )
            found[node.name] = [
                m["sql"]
                for line in chunk.splitlines()
                if (m := _STATEMENT.search(line)) and m["db"] == self.database
            ]
        return found


@pytest.fixture(scope="module")
def cluster_db(pg_base: str, run_id: str) -> Iterator[tuple[str, str]]:
    """A database of its own on the cluster (the run's other tests do not write to it),
    migrated, logging every statement each node receives."""
    name = f"sc_test_{run_id}_hops"
    url = f"{pg_base}/{name}"

    async def make() -> None:
        await create_citus_database(pg_base, name)
        for server in await nodes(pg_base):
            async with connection(f"{server}/postgres") as conn:
                await conn.execute("SET citus.enable_ddl_propagation = off")
                await conn.execute(f"ALTER DATABASE \"{name}\" SET log_statement = 'all'")

    run_in_thread(asyncio.run, make())
    run_in_thread(migrate, Settings(database_url=url))
    yield name, url
    run_in_thread(asyncio.run, drop_databases(pg_base, name))


@pytest.fixture(scope="module")
async def logs(cluster_db: tuple[str, str], pg_base: str) -> Logs:
    name, _ = cluster_db
    found = []
    for server in await nodes(pg_base):
        async with connection(f"{server}/{name}") as conn:
            logfile = await conn.fetchval("SELECT pg_current_logfile()")
            if logfile is None:
                pytest.fail(f"{server} has no logging collector (scripts/citus-cluster.sh)")
            directory = await conn.fetchval("SELECT current_setting('data_directory')")
        host_port = server.rsplit("@", 1)[-1].split("//")[-1]
        found.append(Node(server, host_port, f"{directory}/{logfile}"))
    return Logs(name, found)


@pytest.fixture(scope="module")
async def cluster_api(
    cluster_db: tuple[str, str], redis_url: str, redis_prefix: str
) -> AsyncIterator[Api]:
    _, url = cluster_db
    admin, service = await create_keys(url, "admin", "service")
    settings = Settings(database_url=url, redis_url=redis_url, redis_prefix=f"{redis_prefix}hops:")
    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
        yield Api(client, Keys(admin, service, admin, "admin-0"))


async def node_of(url: str, user_id: str) -> str:
    async with connection(url) as conn:
        row = await conn.fetchrow(
            "SELECT nodename || ':' || nodeport AS node FROM citus_shards"
            " WHERE shardid = get_shard_id_for_distribution_column('users', $1::text)",
            user_id,
        )
    return row["node"]


def one_hop(seen: dict[str, list[str]], home: str, what: str) -> None:
    """Nothing committed in two phases anywhere; the ledger's statements reached the user's
    node (``home``) and no other worker."""
    for node, statements in seen.items():
        two_phase = [s for s in statements if s.startswith(_TWO_PHASE)]
        assert two_phase == [], f"{what}: a two-phase commit on {node}: {two_phase}"
    workers = list(seen)[1:]
    assert any(_LEDGER.search(s) for s in seen[home]), f"{what}: nothing on {home}: {seen}"
    for node in workers:
        if node != home:
            stray = [s for s in seen[node] if _LEDGER.search(s)]
            assert stray == [], f"{what}: {node} (not the user's node) ran {stray}"


async def test_the_schema_is_distributed_and_stays_so(cluster_db) -> None:
    _, url = cluster_db
    async with connection(url) as conn:
        kinds = dict(
            await conn.fetch("SELECT logicalrelid::text, partmethod::text FROM pg_dist_partition")
        )
        colocated = await conn.fetchval(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition WHERE partmethod = 'h'"
        )
        delegated = await conn.fetchval(
            "SELECT count(*) FROM pg_dist_object"
            " WHERE classid = 'pg_proc'::regclass AND distribution_argument_index = 0"
        )
        local = await conn.fetch(
            "SELECT c.relname FROM pg_class c WHERE c.relkind = 'r'"
            " AND c.relnamespace = 'public'::regnamespace"
            " AND NOT EXISTS (SELECT 1 FROM pg_dist_partition p WHERE p.logicalrelid = c.oid)"
        )
    for table in (
        "users",
        "transactions",
        "grants",
        "holds",
        "limits",
        "events",
        "event_deliveries",
        "recharge_rules",
        "recharges",
    ):
        assert kinds.get(table) == "h", (table, kinds)
    for table in (
        "skills",
        "skill_history",
        "api_keys",
        "webhook_endpoints",
        "skill_events",
        "skill_event_deliveries",
    ):
        assert kinds.get(table) == "n", (table, kinds)
    assert colocated == 1
    assert {r["relname"] for r in local} == {"alembic_version"}
    assert kinds.get("database_identity") == "n"
    assert delegated >= 20
    run_in_thread(migrate, Settings(database_url=url))  # again: nothing to do, nothing lost
    async with connection(url) as conn:
        again = dict(
            await conn.fetch("SELECT logicalrelid::text, partmethod::text FROM pg_dist_partition")
        )
    assert again == kinds


async def test_the_user_hash_is_the_servers(cluster_db) -> None:
    _, url = cluster_db
    names = ["", "a", "user-1", "é€𝄞", "x" * 12, "y" * 13, *(uuid.uuid4().hex for _ in range(200))]
    async with connection(url) as conn:
        rows = await conn.fetch("SELECT w, hashtext(w) AS h FROM unnest($1::text[]) w", names)
    assert [(r["w"], r["h"]) for r in rows] == [(w, user_hash(w)) for w in names]


async def test_every_write_about_one_user_is_one_hop(cluster_db, cluster_api, logs) -> None:
    api = cluster_api
    _, url = cluster_db
    skill = await api.create_skill(cost=5)
    user = f"hop-{uuid.uuid4().hex[:8]}"
    home = await node_of(url, user)

    async def hop(what: str, request: Callable, subject: str = user) -> object:
        node = home if subject == user else await node_of(url, subject)
        await logs.mark()
        answer = await request()
        one_hop(await logs.since_mark(), node, what)
        return answer

    c = api.c
    svc, adm = api.keys.auth("service"), api.keys.auth("admin")
    await hop(
        "credit, new user",
        lambda: c.post(
            f"/v1/users/{user}/credits", json={"amount": 100, "type": "PURCHASE"}, headers=adm
        ),
    )
    charged = await hop(
        "charge",
        lambda: c.post("/v1/charges", json={"user_id": user, "skill": skill["name"]}, headers=svc),
    )
    assert charged.status_code == 201, charged.text
    keyed = {**svc, "Idempotency-Key": "k1"}
    body = {"user_id": user, "skill": skill["name"]}
    first = await hop("keyed charge", lambda: c.post("/v1/charges", json=body, headers=keyed))
    again = await hop("replay", lambda: c.post("/v1/charges", json=body, headers=keyed))
    assert first.json() == again.json() and again.headers.get("idempotent-replayed") == "true"
    big = {"user_id": user, "skill": skill["name"], "units": 1000}
    refused = await hop("402", lambda: c.post("/v1/charges", json=big, headers=svc))
    assert refused.status_code == 402
    nobody = {"user_id": f"{user}-nobody", "skill": skill["name"]}
    missing = await hop(
        "unknown user",
        lambda: c.post("/v1/charges", json=nobody, headers=svc),
        subject=nobody["user_id"],
    )
    assert missing.status_code == 404
    hold = await hop("hold", lambda: c.post("/v1/holds", json={**body, "units": 2}, headers=svc))
    assert hold.status_code == 201, hold.text
    hold_id = hold.json()["id"]
    got = await hop("hold by id", lambda: c.get(f"/v1/holds/{hold_id}", headers=svc))
    assert got.json()["user_id"] == user
    captured = await hop(
        "capture", lambda: c.post(f"/v1/holds/{hold_id}/capture", json={}, headers=svc)
    )
    assert captured.status_code == 201, captured.text
    other = await c.post("/v1/holds", json=body, headers=svc)
    released = await hop(
        "release", lambda: c.post(f"/v1/holds/{other.json()['id']}/release", headers=svc)
    )
    assert released.status_code == 200, released.text
    tx = charged.json()["id"]
    read = await hop("transaction by id", lambda: c.get(f"/v1/transactions/{tx}", headers=svc))
    assert read.json()["user_id"] == user
    refunded = await hop(
        "refund", lambda: c.post(f"/v1/transactions/{tx}/refund", json={}, headers=svc)
    )
    assert refunded.status_code == 201, refunded.text
    twice = await hop(
        "refund again", lambda: c.post(f"/v1/transactions/{tx}/refund", json={}, headers=svc)
    )
    assert twice.status_code == 409
    limit = await hop(
        "limit create",
        lambda: c.post(
            f"/v1/users/{user}/limits", json={"window": "day", "max_credits": 6}, headers=adm
        ),
    )
    assert limit.status_code == 201, limit.text
    over = await hop("429", lambda: c.post("/v1/charges", json={**body, "units": 2}, headers=svc))
    assert over.status_code == 429, over.text
    limit_id = limit.json()["id"]
    changed = await hop(
        "limit change",
        lambda: c.patch(
            f"/v1/users/{user}/limits/{limit_id}", json={"max_credits": 50}, headers=adm
        ),
    )
    assert changed.status_code == 200, changed.text
    removed = await hop(
        "limit remove", lambda: c.delete(f"/v1/users/{user}/limits/{limit_id}", headers=adm)
    )
    assert removed.status_code == 204
    unknown = {"user_id": user, "skill": "NO_SUCH_SKILL"}
    no_skill = await hop("unknown skill", lambda: c.post("/v1/charges", json=unknown, headers=svc))
    assert no_skill.status_code == 404, no_skill.text
    async with connection(url) as conn:  # a grant and a hold past their expiry
        await conn.execute(
            "SELECT * FROM sc_credit($1, 'GRANT', 7, NULL, NULL, NULL,"
            " clock_timestamp() + interval '50 milliseconds', NULL, 'promotional')",
            user,
        )
        lapsing = await conn.fetchrow(
            "SELECT id FROM sc_hold($1, $2, NULL, 1, 1, NULL, NULL, NULL)", user, skill["name"]
        )
    await asyncio.sleep(1.2)
    expired = await hop("expiry", lambda: c.post("/v1/charges", json=body, headers=svc))
    assert expired.status_code == 201, expired.text
    async with connection(url) as conn:
        types = [
            r["type"]
            for r in await conn.fetch(
                "SELECT type FROM transactions WHERE user_id = $1 ORDER BY seq", user
            )
        ]
        hold = await conn.fetchval(
            "SELECT status FROM holds WHERE user_id = $1 AND id = $2", user, lapsing["id"]
        )
    assert "EXPIRY" in types, types
    assert hold == "expired"
    # auto-recharge: set while low (asks at once), a charge that asks, fulfil, fail, remove
    rule = await hop(
        "auto-recharge set",
        lambda: c.put(
            f"/v1/users/{user}/auto-recharge", json={"threshold": 10_000, "amount": 50}, headers=svc
        ),
    )
    assert rule.status_code == 200 and rule.json()["pending"] is not None, rule.text
    asked = rule.json()["pending"]["id"]
    got = await hop("recharge by id", lambda: c.get(f"/v1/recharges/{asked}", headers=svc))
    assert got.json()["user_id"] == user
    bought = await hop(
        "recharge fulfil", lambda: c.post(f"/v1/recharges/{asked}/fulfil", json={}, headers=svc)
    )
    assert bought.status_code == 201, bought.text
    again = await hop(
        "recharge fulfil again",
        lambda: c.post(f"/v1/recharges/{asked}/fulfil", json={}, headers=svc),
    )
    assert again.json() == bought.json()
    asks = await hop("charge that asks", lambda: c.post("/v1/charges", json=body, headers=svc))
    assert asks.status_code == 201, asks.text
    pending = (await c.get(f"/v1/users/{user}/auto-recharge", headers=svc)).json()["pending"]
    failed = await hop(
        "recharge fail",
        lambda: c.post(f"/v1/recharges/{pending['id']}/fail", json={"reason": "no"}, headers=svc),
    )
    assert failed.status_code == 200, failed.text
    gone = await hop(
        "auto-recharge remove", lambda: c.delete(f"/v1/users/{user}/auto-recharge", headers=svc)
    )
    assert gone.status_code == 204


async def test_batches_go_by_node_in_one_hop(cluster_db, logs) -> None:
    """Writes of users on both workers, arriving together: each call carries users of one
    node and commits there alone."""
    _, url = cluster_db
    db = Database(Settings(database_url=url))
    await db.start()
    try:
        shards = await db.shard_map()
        assert isinstance(shards, ShardMap)
        users = [f"batch-{n}" for n in range(24)]
        assert len({shards.node_of(u) for u in users}) == 2
        async with connection(url) as conn:
            await conn.execute(
                "INSERT INTO skills (name, display_name, cost) VALUES ('BATCH_HOP', 'b', 1)"
            )
            for u in users:
                await conn.fetchrow(
                    "SELECT * FROM sc_credit($1, 'PURCHASE', 10, NULL, NULL, NULL, NULL, NULL,"
                    " NULL)",
                    u,
                )
        batcher = ChargeBatcher(db, max_items=64, slots=1, wait=10)
        params = [
            {
                "user_id": u,
                "skill": "BATCH_HOP",
                "version": None,
                "units": 1,
                "description": None,
                "key": None,
                "hash": None,
                "api_key_id": None,
                "member": None,
                "limited": False,
            }
            for u in users
        ]
        await logs.mark()
        rows = await asyncio.gather(*(batcher.write(p) for p in params))
        seen = await logs.since_mark()
        assert all(r is not None and r.outcome == "written" for r in rows), rows
        assert max(batcher.sizes) > 1, batcher.sizes  # batched, not one by one
        for node, statements in seen.items():
            assert not [s for s in statements if s.startswith(_TWO_PHASE)], (node, statements)
        await assert_reconciled(db)
    finally:
        await db.dispose()


def _pg_ctl(data_dir: str, *args: str) -> None:
    """pg_ctl on a node of this machine, as the OS user that owns its data (not root)."""
    pg_ctl = os.path.join(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"), "pg_ctl")
    owner = pwd.getpwuid(os.stat(data_dir).st_uid).pw_name
    command = [pg_ctl, "-D", data_dir, "-w", "-t", "60", *args]
    if os.geteuid() == 0 and owner != "root":
        command = ["runuser", "-u", owner, "--", *command]
    subprocess.run(command, check=True, capture_output=True, timeout=90)


@pytest.mark.faults
async def test_a_worker_restarted_under_load_loses_and_doubles_nothing(
    cluster_db, cluster_api, pg_base, redis_url, redis_prefix
) -> None:
    """`skill-credits serve` on the cluster, keyed charges of users on both workers, while
    one worker crashes and starts again: its users' charges answer 503 while it is down
    (never a 500, never slow), and charge again by themselves once it is back; every
    charge answered 201 is there once, every 503 retried with its key is written once;
    reconcile is clean."""
    name, url = cluster_db
    victim = (await nodes(pg_base))[-1]
    async with connection(f"{victim}/{name}") as conn:
        data_dir = await conn.fetchval("SELECT current_setting('data_directory')")
    if not os.path.isdir(data_dir):  # noqa: ASYNC240 - once, before the load
        pytest.skip("the worker's data directory is not on this machine")
    victim_node = victim.rsplit("@", 1)[-1].split("//")[-1]
    mine: list[str] = []
    others: list[str] = []
    for n in range(400):
        user = f"fault-{uuid.uuid4().hex[:6]}-{n}"
        group = mine if await node_of(url, user) == victim_node else others
        if len(group) < 4:
            group.append(user)
        if len(mine) == len(others) == 4:
            break
    keys = cluster_api.keys
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "REDIS_PREFIX": f"{redis_prefix}fault:"}
    server = AppServer(env, workers=1)
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            api = Api(http, keys)
            skill = (await api.create_skill(cost=1))["name"]
            for user in mine + others:
                await api.credit(user, 100_000)
            answers: list[tuple[str, str, int, float]] = []
            stop = asyncio.Event()

            async def load(user: str) -> None:
                n = 0
                while not stop.is_set():
                    key = f"{user}-{n}"
                    n += 1
                    started = time.monotonic()
                    r = await api.charge(user, skill, key=key)
                    answers.append((user, key, r.status_code, time.monotonic() - started))
                    if r.status_code != 201:
                        await asyncio.sleep(0.05)

            tasks = [asyncio.create_task(load(u)) for u in mine + others]
            try:
                await asyncio.sleep(1.0)
                down_from = len(answers)
                await asyncio.to_thread(_pg_ctl, data_dir, "-m", "immediate", "stop")
                await asyncio.sleep(2.0)
                down_to = len(answers)
                log = os.path.join(data_dir, "log", "restart.log")
                await asyncio.to_thread(_pg_ctl, data_dir, "-l", log, "start")
                await asyncio.sleep(5.0)  # back by itself
                back_from = len(answers)
                await asyncio.sleep(1.0)
            finally:
                stop.set()
                await asyncio.gather(*tasks)

            statuses = {status for _, _, status, _ in answers}
            assert statuses <= {201, 503}, statuses
            while_down = [a for a in answers[down_from:down_to] if a[0] in mine]
            assert any(a[2] == 503 for a in while_down), while_down
            assert all(a[3] < 2.5 for a in answers if a[2] == 503), "a 503 took too long"
            after = [a for a in answers[back_from:] if a[0] in mine]
            assert after and all(a[2] == 201 for a in after), after
            assert any(a[2] == 201 for a in answers[down_from:down_to] if a[0] in others)
            for user, key, status, _ in answers:  # every unanswered charge, retried
                if status == 503:
                    again = await api.charge(user, skill, key=key)
                    assert again.status_code == 201, again.text
    finally:
        server.stop()
    async with connection(url) as conn:
        rows = await conn.fetch(
            "SELECT user_id, idempotency_key, count(*) AS n FROM transactions"
            " WHERE user_id = ANY($1::text[]) AND type = 'CONSUMPTION'"
            " GROUP BY user_id, idempotency_key",
            mine + others,
        )
    written = {(r["user_id"], r["idempotency_key"]): r["n"] for r in rows}
    assert set(written.values()) == {1}
    assert set(written) == {(user, key) for user, key, _, _ in answers}
    db = Database(Settings(database_url=url))
    try:
        await assert_reconciled(db)
    finally:
        await db.dispose()


async def test_connections_spread_over_the_nodes_and_an_edit_reaches_each(
    cluster_db, cluster_api, pg_base, redis_url, redis_prefix
) -> None:
    """DATABASE_URL naming every node: the service's connections go to all of them, each
    node runs charges (delegated to the user's node), and a price edit made through one
    node is what every node charges next (the promise of an edit)."""
    _, url = cluster_db
    servers_ = await nodes(pg_base)
    hosts = ",".join(s.rsplit("@", 1)[-1].split("//")[-1] for s in servers_)
    login = servers_[0].split("//", 1)[1].rpartition("@")[0]
    spread = f"postgresql://{login}@{hosts}/{url.rsplit('/', 1)[1]}"
    settings = Settings(
        database_url=spread, redis_url=redis_url, redis_prefix=f"{redis_prefix}spread:"
    )
    db = Database(settings)
    await db.start()
    try:
        async with contextlib.AsyncExitStack() as held:  # connections open at once
            ports = set()
            for _ in range(len(servers_)):
                conn = await held.enter_async_context(db.connect())
                ports.add((await conn.execute(text("SELECT inet_server_port()"))).scalar())
        assert len(ports) == len(servers_), ports
        lent = [db.statements() for _ in range(len(servers_))]
        conns = [await lend.__aenter__() for lend in lent]
        try:
            port = text("SELECT inet_server_port()")
            fast = {(await c.execute(port)).scalar() for c in conns}
        finally:
            for lend in lent:
                await lend.__aexit__(None, None, None)
        assert len(fast) == len(servers_), fast
    finally:
        await db.dispose()
    async with AsyncTestClient(app=create_app(settings), timeout=30) as client:
        api = Api(client, cluster_api.keys)
        skill = await api.create_skill(cost=5)
        users = [f"spread-{uuid.uuid4().hex[:8]}" for _ in range(8)]
        for user in users:
            await api.credit(user, 1000)
        for user in users:
            r = await api.charge(user, skill["name"])
            assert r.status_code == 201 and r.json()["unit_cost"] == 5, r.text
        await api.patch_skill(skill["name"], cost=7)
        for _ in range(2):
            for user in users:
                r = await api.charge(user, skill["name"])
                assert r.status_code == 201 and r.json()["unit_cost"] == 7, r.text


async def test_a_database_that_grew_on_one_server_is_converted_by_migrate(
    pg_base, run_id, redis_url, redis_prefix
) -> None:
    """A database made and used without Citus (on the coordinator's server, no extension),
    then the extension and the workers added and `skill-credits migrate` run again: every
    row is kept and distributed, the log reconciles, and writes go on in one hop."""
    name = f"sc_test_{run_id}_grown"
    url = f"{pg_base}/{name}"
    run_in_thread(migrate, Settings(database_url=url))  # one server's database
    try:
        db = Database(Settings(database_url=url))
        await db.start()
        try:
            async with connection(url) as conn:
                assert not await conn.fetchval(
                    "SELECT count(*) FROM pg_extension WHERE extname = 'citus'"
                )
                await conn.execute(
                    "INSERT INTO skills (name, display_name, cost) VALUES ('GROWN', 'g', 2)"
                )
                for n in range(30):
                    user = f"grown-{n}"
                    await conn.fetchrow(
                        "SELECT * FROM sc_credit($1, 'PURCHASE', 100, NULL, NULL, NULL, NULL,"
                        " NULL, NULL)",
                        user,
                    )
                    for k in range(3):
                        await conn.fetchrow(
                            "SELECT * FROM sc_charge($1, 'GROWN', NULL, 1, NULL, $2, $3, NULL)",
                            user,
                            f"k{k}",
                            b"h",
                        )
                    await conn.fetchrow(
                        "SELECT * FROM sc_hold($1, 'GROWN', NULL, 1, 60, NULL, NULL, NULL)", user
                    )
                before = {
                    table: await conn.fetchval(f"SELECT count(*) FROM {table}")
                    for table in ("users", "transactions", "grants", "holds", "skills")
                }
        finally:
            await db.dispose()
        await create_citus_database(pg_base, name, grown=True)
        run_in_thread(migrate, Settings(database_url=url))
        async with connection(url) as conn:
            distributed = {
                r[0]
                for r in await conn.fetch(
                    "SELECT logicalrelid::text FROM pg_dist_partition WHERE partmethod = 'h'"
                )
            }
            after = {
                table: await conn.fetchval(f"SELECT count(*) FROM {table}") for table in before
            }
            written = await conn.fetchrow(
                "SELECT outcome, balance_after FROM sc_charge('grown-7', 'GROWN', NULL, 1, NULL,"
                " 'k0', 'h', NULL) o"
            )
        assert {"users", "transactions", "grants", "holds"} <= distributed
        assert after == before
        assert (written["outcome"], written["balance_after"]) == ("replay", 98)
        db = Database(Settings(database_url=url))
        try:
            await assert_reconciled(db)
        finally:
            await db.dispose()
    finally:
        await drop_databases(pg_base, name)
