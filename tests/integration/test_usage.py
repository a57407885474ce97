"""Usage (GET /v1/usage) and the forecast, against a database of this module's own.

The figures are checked against a model built from what the API itself shows of the log
(each transaction's type, units, amount, member, sources, and the category of each source's
grant), with the rows moved to instants of the test's choosing (back-dated in the test's own
database, before any rollup ran), so buckets, a refund across a day boundary and the edges
of a range are exact. Every answer is compared three ways: read from the log alone, with
the rollups halfway through the range, and with everything rolled up.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import re
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from skill_credits.app import create_app
from skill_credits.auth import create_key
from skill_credits.db import Database
from skill_credits.migrate import migrate
from skill_credits.settings import Settings
from skill_credits.usage import repository as usage_repo
from skill_credits.usage import service as usage_service
from tests.support import servers
from tests.support.api import Api, Keys
from tests.support.databases import assert_reconciled, create_citus_database, drop_databases
from tests.support.run import run_in_thread, unique

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def usage_settings(pg_base: str, run_id: str, redis_url: str, redis_prefix: str) -> Iterator:
    name = f"sc_test_{run_id}_usage"
    if servers.citus():
        run_in_thread(asyncio.run, create_citus_database(pg_base, name))
    settings = Settings(
        database_url=f"{pg_base}/{name}", redis_url=redis_url, redis_prefix=f"{redis_prefix}u:"
    )
    run_in_thread(migrate, settings)
    yield settings
    run_in_thread(asyncio.run, drop_databases(pg_base, name))


@pytest.fixture(scope="module")
async def udb(usage_settings: Settings) -> AsyncIterator[Database]:
    database = Database(usage_settings)
    await database.start()
    yield database
    await database.dispose()


@pytest.fixture(scope="module")
async def uapi(usage_settings: Settings, udb: Database, run_id: str) -> AsyncIterator[Api]:
    async with udb.engine.begin() as conn:
        admin = await create_key(conn, f"admin-{run_id}", "admin")
        service = await create_key(conn, f"service-{run_id}", "service")
    keys = Keys(admin.token, service.token, "", admin.name)
    async with AsyncTestClient(app=create_app(usage_settings), timeout=30) as client:
        yield Api(client, keys)


@dataclass(frozen=True)
class Row:
    """One log row as usage counts it (the model's input)."""

    at: datetime
    user: str
    skill: str
    member: str | None
    charges: int
    units: int
    consumed: int
    refunded: int
    paid: int  # of consumed or refunded, from (to) paid grants


async def post(api: Api, path: str, body: dict, role: str = "service") -> dict:
    r = await api.c.post(path, json=body, headers=api.keys.auth(role))
    assert r.status_code == 201, r.text
    return r.json()


async def credit(api: Api, user: str, amount: int, type_: str) -> dict:
    return await post(api, f"/v1/users/{user}/credits", {"amount": amount, "type": type_}, "admin")


async def charge(api: Api, user: str, skill: str, units: int = 1, member: str | None = None):
    body: dict = {"user_id": user, "skill": skill, "units": units}
    if member:
        body["member"] = member
    return await post(api, "/v1/charges", body)


async def backdate(db: Database, user: str, tx_id: str, at: datetime) -> None:
    """Test setup: the row was made at ``at`` (in this module's own database only)."""
    async with db.connect() as conn:
        await conn.execute(
            text("UPDATE transactions SET created_at = :at WHERE user_id = :u AND id = :id"),
            {"at": at, "u": user, "id": tx_id},
        )


async def model_rows(api: Api, users: list[str], when: dict[str, datetime]) -> list[Row]:
    """The model's input, from what the API shows: every charge, capture and refund."""
    rows: list[Row] = []
    for user in users:
        r = await api.c.get(
            f"/v1/users/{user}/transactions",
            params={"limit": 200},
            headers=api.keys.auth("service"),
        )
        txs = r.json()["items"]
        category = {}
        for status in ("active", "depleted", "expired"):
            g = await api.c.get(
                f"/v1/users/{user}/grants",
                params={"status": status, "limit": 200},
                headers=api.keys.auth("service"),
            )
            category |= {x["id"]: x["category"] for x in g.json()["items"]}
        by_id = {t["id"]: t for t in txs}
        for t in txs:
            paid = sum(s["amount"] for s in t["sources"] if category[s["grant_id"]] == "paid")
            if t["type"] == "CONSUMPTION":
                rows.append(
                    Row(
                        when[t["id"]],
                        user,
                        t["skill"],
                        t.get("member"),
                        1,
                        t["units"],
                        -t["amount"],
                        0,
                        paid,
                    )
                )
            elif t["type"] == "REFUND":
                o = by_id[t["refund_of"]]
                rows.append(
                    Row(
                        when[t["id"]], user, o["skill"], o.get("member"), 0, 0, 0, t["amount"], paid
                    )
                )
    return rows


def trunc(at: datetime, interval: str) -> datetime:
    return usage_service.bucket_start(at, interval)


def expected(
    rows: list[Row],
    start: datetime,
    end: datetime,
    interval: str,
    group_by: str,
    user: str | None = None,
    member: str | None = None,
    skill: str | None = None,
):
    sums: dict = defaultdict(lambda: [0, 0, 0, 0])
    for r in rows:
        if not (start <= r.at < end):
            continue
        if (
            (user and r.user != user)
            or (member and r.member != member)
            or (skill and r.skill != skill)
        ):
            continue
        bucket = iso(trunc(r.at, interval))
        if group_by == "category":
            consumed_paid = r.paid if r.charges else 0
            refunded_paid = r.paid if not r.charges else 0
            for name, c, f in (
                ("paid", consumed_paid, refunded_paid),
                ("promotional", r.consumed - consumed_paid, r.refunded - refunded_paid),
            ):
                s = sums[(bucket, name)]
                s[2] += c
                s[3] += f
            continue
        group = {"skill": r.skill, "user": r.user, "member": r.member, "none": None}[group_by]
        s = sums[(bucket, group)]
        s[0] += r.charges
        s[1] += r.units
        s[2] += r.consumed
        s[3] += r.refunded
    items = []
    for (bucket, group), (n, units, consumed, refunded) in sorted(
        sums.items(), key=lambda kv: (kv[0][0], kv[0][1] is not None, kv[0][1] or "")
    ):
        if group_by == "category":
            if consumed or refunded:
                items.append([bucket, group, None, None, consumed, refunded])
        else:
            items.append([bucket, group, n, units, consumed, refunded])
    return items


async def get_usage(api: Api, role: str = "service", **params) -> dict:
    r = await api.c.get("/v1/usage", params=params, headers=api.keys.auth(role))
    assert r.status_code == 200, r.text
    return r.json()


def shape(answer: dict) -> list:
    return [
        [i["start"], i["group"], i["charges"], i["units"], i["consumed"], i["refunded"]]
        for i in answer["items"]
    ]


@pytest.fixture(scope="module")
async def scene(uapi: Api, udb: Database):
    """Two users, two skills, members, paid and promotional credits, a capture, refunds
    (one across a day boundary), at instants of the test's choosing."""
    api = uapi
    a = (await api.create_skill(cost=3, name=unique("USE_A")))["name"]
    b = (await api.create_skill(cost=5, name=unique("USE_B")))["name"]
    u1, u2 = unique("use-1").lower(), unique("use-2").lower()
    when: dict[str, datetime] = {}
    await credit(api, u1, 20, "GRANT")  # promotional, spent first (older)
    await credit(api, u1, 100, "PURCHASE")  # paid
    await credit(api, u2, 50, "PURCHASE")
    plan = [  # (user, skill, units, member, at)
        (u1, a, 2, "alice", T0 + timedelta(hours=10, minutes=15)),
        (u1, a, 1, None, T0 + timedelta(hours=10, minutes=45)),
        (u1, b, 1, "alice", T0 + timedelta(hours=11, minutes=5)),
        (u1, b, 3, "bob", T0 + timedelta(hours=23, minutes=50)),
        (u2, b, 1, None, T0 + timedelta(days=14, hours=9)),
    ]
    made = []
    for user, skill, units, member, at in plan:
        tx = await charge(api, user, skill, units, member)
        when[tx["id"]] = at
        made.append(tx)
    hold = await post(api, "/v1/holds", {"user_id": u2, "skill": a, "units": 4})
    captured = await post(api, f"/v1/holds/{hold['id']}/capture", {"units": 3})
    when[captured["id"]] = T0 + timedelta(hours=12)
    # the 15-credit charge of 23:50 refunded at 00:10 the next day; u2's capture in March
    refund = await post(api, f"/v1/transactions/{made[3]['id']}/refund", {})
    when[refund["id"]] = T0 + timedelta(days=1, minutes=10)
    refund2 = await post(api, f"/v1/transactions/{captured['id']}/refund", {})
    when[refund2["id"]] = T0 + timedelta(days=20)
    for user in (u1, u2):
        async with udb.connect() as conn:
            ids = [
                r[0]
                for r in await conn.execute(
                    text("SELECT id::text FROM transactions WHERE user_id = :u"), {"u": user}
                )
            ]
        for tx_id in ids:
            if tx_id in when:
                await backdate(udb, user, tx_id, when[tx_id])
            else:  # the credits: before everything
                when[tx_id] = T0 - timedelta(days=1)
                await backdate(udb, user, tx_id, when[tx_id])
    rows = await model_rows(api, [u1, u2], when)
    # the forecast's user: a charge of 70 eight days ago, outside the burn window
    fc_skill = (await api.create_skill(cost=7, name=unique("FC")))["name"]
    fc_user = unique("fc").lower()
    await credit(api, fc_user, 1000, "PURCHASE")
    soon = await post(
        api,
        f"/v1/users/{fc_user}/credits",
        {
            "amount": 40,
            "type": "GRANT",
            "expires_at": iso(datetime.now(UTC) + timedelta(days=3)),
            "priority": 90,  # spent last: it stays whole
        },
        "admin",
    )
    later = datetime.now(UTC) + timedelta(days=60)
    await post(
        api,
        f"/v1/users/{fc_user}/credits",
        {"amount": 30, "type": "GRANT", "expires_at": iso(later)},
        "admin",
    )
    old = await charge(api, fc_user, fc_skill, 10)
    await backdate(udb, fc_user, old["id"], datetime.now(UTC) - timedelta(days=8))
    return {
        "a": a,
        "b": b,
        "u1": u1,
        "u2": u2,
        "rows": rows,
        "fc_skill": fc_skill,
        "fc_user": fc_user,
        "fc_soon": soon,
    }


QUERIES = [
    # (from, to, interval, group_by, filters)
    (T0, T0 + timedelta(days=31), "day", "skill", {}),
    (T0, T0 + timedelta(days=31), "day", "user", {}),
    (T0, T0 + timedelta(days=31), "day", "member", {}),
    (T0, T0 + timedelta(days=31), "day", "category", {}),
    (T0, T0 + timedelta(days=31), "day", "none", {}),
    (T0, T0 + timedelta(days=2), "hour", "skill", {}),
    (T0, T0 + timedelta(days=2), "hour", "category", {"user_id": "u1"}),
    (T0 - timedelta(days=40), T0 + timedelta(days=40), "month", "skill", {}),
    (T0, T0 + timedelta(days=31), "month", "member", {"user_id": "u1"}),
    (T0, T0 + timedelta(days=31), "day", "skill", {"member": "alice"}),
    (T0, T0 + timedelta(days=31), "day", "user", {"skill": "b"}),
    # edges that are not whole hours: 10:30 to 23:55 cuts two hours
    (
        T0 + timedelta(hours=10, minutes=30),
        T0 + timedelta(hours=23, minutes=55),
        "hour",
        "skill",
        {},
    ),
    (T0 + timedelta(hours=10, minutes=30), T0 + timedelta(hours=10, minutes=50), "day", "none", {}),
    (T0 + timedelta(hours=11), T0 + timedelta(days=1, minutes=11), "day", "category", {}),
]


def _filters(scene: dict, filters: dict) -> dict:
    return {k: scene[v] if v in scene else v for k, v in filters.items()}


async def _check_all(api: Api, scene: dict) -> None:
    for start, end, interval, group_by, filters in QUERIES:
        f = _filters(scene, filters)
        answer = await get_usage(
            api,
            **{"from": iso(start), "to": iso(end), "interval": interval, "group_by": group_by},
            **f,
        )
        want = expected(
            scene["rows"],
            start,
            end,
            interval,
            group_by,
            **{{"user_id": "user"}.get(k, k): v for k, v in f.items()},
        )
        assert shape(answer) == want, (start, end, interval, group_by, f)
        totals = defaultdict(lambda: [0, 0, 0, 0])
        for item in want:
            t = totals[item[1]]
            for n, v in enumerate(item[2:]):
                t[n] = None if v is None else (t[n] or 0) + v
        assert {
            t["group"]: [t["charges"], t["units"], t["consumed"], t["refunded"]]
            for t in answer["totals"]
        } == dict(totals)


async def test_every_grouping_and_interval_is_exact_from_the_log_rollups_and_both(
    uapi: Api, udb: Database, scene: dict
) -> None:
    assert scene["rows"], "the scene made no usage"
    await _check_all(uapi, scene)  # the log alone: nothing is rolled up yet
    async with udb.connect() as conn:
        # half the range rolled up: the mark lands inside an hour with rows on both sides
        half = T0 + timedelta(hours=10, minutes=30)
        mark = await usage_repo.roll(conn, half, timedelta(days=1))
        while mark is not None and mark < half:  # one day per step
            mark = await usage_repo.roll(conn, half, timedelta(days=1))
    if servers.citus():
        assert mark is None  # the cluster reads the log on its workers
    else:
        assert mark == half
    await _check_all(uapi, scene)
    assert await usage_service.roll(udb) is None or not servers.citus()
    await _check_all(uapi, scene)
    await assert_reconciled(udb)


async def test_a_charge_answered_is_in_the_next_answer_after_a_concurrent_burst(
    uapi: Api, udb: Database
) -> None:
    api = uapi
    skill = (await api.create_skill(cost=2, name=unique("BURST")))["name"]
    users = [unique("burst").lower() for _ in range(4)]
    for user in users:
        await credit(api, user, 1000, "PURCHASE")
    roller = asyncio.create_task(_roll_forever(udb))
    try:
        answers = await asyncio.gather(
            *(charge(api, users[n % 4], skill, 1 + n % 3) for n in range(40))
        )
        got = await get_usage(api, group_by="user", skill=skill)
    finally:
        roller.cancel()
    want: dict = defaultdict(lambda: [0, 0, 0])
    for tx in answers:
        w = want[tx["user_id"]]
        w[0] += 1
        w[1] += tx["units"]
        w[2] += -tx["amount"]
    assert {t["group"]: [t["charges"], t["units"], t["consumed"]] for t in got["totals"]} == want


async def _roll_forever(db: Database) -> None:
    while True:
        await usage_service.roll(db)
        await asyncio.sleep(0.01)


async def test_csv_answers_the_same_items(uapi: Api, scene: dict) -> None:
    params = {"from": iso(T0), "to": iso(T0 + timedelta(days=31)), "group_by": "category"}
    answer = await get_usage(uapi, **params)
    for how in ({"format": "csv"}, {}):
        headers = uapi.keys.auth("service") | ({} if how else {"Accept": "text/csv"})
        r = await uapi.c.get("/v1/usage", params=params | how, headers=headers)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("text/csv")
        lines = list(csv.reader(io.StringIO(r.text)))
        assert lines[0] == ["start", "group", "charges", "units", "consumed", "refunded"]
        assert lines[1:] == [
            [i["start"], i["group"] or "", "", "", str(i["consumed"]), str(i["refunded"])]
            for i in answer["items"]
        ]
        assert len(lines) > 2


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "yesterday"}, "from"),
        ({"from": "2026-03-01T00:00:00"}, "from"),  # no offset
        ({"to": "2026-03-01"}, "to"),
        ({"from": "2026-03-02T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
        ({"from": "2026-03-01T00:00:00Z", "to": "2026-03-01T00:00:00Z"}, "from"),
        (
            {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:01Z", "interval": "hour"},
            "from",
        ),
        ({"interval": "week"}, "interval"),
        ({"group_by": "team"}, "group_by"),
        ({"user_id": "no spaces"}, "user_id"),
        ({"member": "x" * 129}, "member"),
        ({"skill": "lower"}, "skill"),
        ({"format": "xml"}, "format"),
        ({"from": "20260101T000000Z"}, "from"),  # ISO 8601's basic form, not RFC 3339
        ({"from": "2026-01-01T00:00+05:00"}, "from"),  # no seconds
        ({"from": "0001-01-01T00:30:00+01:00"}, "from"),  # before year 1 in UTC
        ({"to": "0001-01-10T00:00:00Z"}, "from"),  # its default from would be
    ],
)
async def test_bad_parameters_are_400_naming_them(uapi: Api, params: dict, field: str) -> None:
    r = await uapi.c.get("/v1/usage", params=params, headers=uapi.keys.auth("service"))
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "validation_error"
    assert r.json()["field"] == field, r.json()


async def test_rfc_3339_in_either_case_and_any_offset_is_one_instant(uapi: Api) -> None:
    auth = uapi.keys.auth("service")
    forms = ("2026-03-01t10:00:00z", "2026-03-01T12:00:00.000000001+02:00", "2026-03-01T10:00:00Z")
    answers = []
    for value in forms:
        r = await uapi.c.get("/v1/usage", params={"to": value}, headers=auth)
        assert r.status_code == 200, (value, r.text)
        answers.append((r.json()["from"], r.json()["to"]))
    assert answers == [("2026-01-30T10:00:00Z", "2026-03-01T10:00:00Z")] * 3


async def test_accept_chooses_the_format_by_preference(uapi: Api) -> None:
    auth = uapi.keys.auth("service")
    for accept, kind in (
        ("text/csv;q=0, application/json", "application/json"),
        ("text/csv", "text/csv"),
        ("application/json;q=0.5, text/csv", "text/csv"),
        ("*/*", "application/json"),
    ):
        r = await uapi.c.get("/v1/usage", headers=auth | {"Accept": accept})
        assert r.headers["content-type"].startswith(kind), (accept, r.headers["content-type"])
        assert r.headers["vary"] == "Accept"


async def test_the_most_buckets_is_744(uapi: Api) -> None:
    ok = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "interval": "hour"}
    assert (
        await uapi.c.get("/v1/usage", params=ok, headers=uapi.keys.auth("service"))
    ).status_code == 200


async def test_unknown_user_and_skill_are_404_and_a_key_is_needed(uapi: Api) -> None:
    auth = uapi.keys.auth("service")
    r = await uapi.c.get("/v1/usage", params={"user_id": "nobody-here"}, headers=auth)
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    r = await uapi.c.get("/v1/usage", params={"skill": "NO_SUCH_SKILL"}, headers=auth)
    assert (r.status_code, r.json()["code"]) == (404, "skill_not_found")
    r = await uapi.c.get("/v1/users/nobody-here/forecast", headers=auth)
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    r = await uapi.c.get("/v1/users/bad%20id/forecast", headers=auth)
    assert r.status_code == 400
    assert (await uapi.c.get("/v1/usage")).status_code == 401


async def test_the_forecast_is_burn_over_seven_days_and_what_it_leaves(
    uapi: Api, scene: dict
) -> None:
    api = uapi
    skill, user, soon = scene["fc_skill"], scene["fc_user"], scene["fc_soon"]
    r = await api.c.get(f"/v1/users/{user}/forecast", headers=api.keys.auth("service"))
    first = r.json()  # the one charge is eight days old: no burn
    assert (first["burn_per_day"], first["runway_days"], first["depletes_at"]) == (0, None, None)
    recent = [await charge(api, user, skill, n) for n in (1, 2, 3)]  # 7 + 14 + 21 = 42
    await post(api, f"/v1/transactions/{recent[0]['id']}/refund", {})  # -7
    r = await api.c.get(f"/v1/users/{user}/forecast", headers=api.keys.auth("service"))
    f = r.json()
    balance = (await api.c.get(f"/v1/users/{user}", headers=api.keys.auth("service"))).json()
    assert f["available"] == balance["available"] == 1000 + 40 + 30 - 70 - 42 + 7
    assert f["burn_per_day"] == pytest.approx(35 / 7)
    assert f["runway_days"] == pytest.approx(f["available"] / 5)
    depletes = datetime.fromisoformat(f["depletes_at"])
    assert abs(depletes - (datetime.now(UTC) + timedelta(days=f["available"] / 5))) < timedelta(
        minutes=1
    )
    # the grant of 40 expires within 30 days; the one of 30 in 60 days does not count
    assert [(e["grant_id"], e["remaining"]) for e in f["expiring"]] == [(soon["grant_id"], 40)]
    assert datetime.fromisoformat(f["expiring"][0]["expires_at"]) - datetime.now(UTC) < timedelta(
        days=3
    )


def _roll_process(settings: Settings) -> subprocess.Popen:
    env = os.environ | {"DATABASE_URL": settings.database_url}
    return subprocess.Popen(
        [sys.executable, "-m", "skill_credits.cli", "usage-roll"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


async def _rolls_waiting(db: Database, count: int) -> list[int]:
    """The backends of ``count`` rollup steps, once each waits on a lock (midway through)."""
    for _ in range(200):
        async with db.connect() as conn:
            pids = [
                pid
                for (pid,) in await conn.execute(
                    text(
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                        " AND query LIKE '%sc_usage_roll%' AND wait_event_type = 'Lock'"
                        " AND pid <> pg_backend_pid()"
                    )
                )
            ]
        if len(pids) >= count:
            return pids
        await asyncio.sleep(0.05)
    raise AssertionError("the rollup steps never reached the lock")


@pytest.mark.one_server
async def test_a_rollup_step_killed_midway_or_run_twice_counts_each_row_once(
    uapi: Api, udb: Database, usage_settings: Settings
) -> None:
    """Each step is one transaction: its client SIGKILLed, its backend terminated midway
    (after it added to usage_hours, while it waits to add to usage_skill_hours), or two
    steps at once - every charge is counted once, and the rollups agree with the log."""
    api = uapi
    skill = (await api.create_skill(cost=3, name=unique("ROLL")))["name"]
    user = unique("roll").lower()
    await credit(api, user, 10_000, "PURCHASE")
    made: list[dict] = []

    async def check() -> None:
        got = await get_usage(api, group_by="none", skill=skill)
        assert [(t["charges"], t["consumed"]) for t in got["totals"]] == [
            (len(made), 3 * len(made))
        ]
        async with udb.connect() as conn:
            assert await usage_repo.problems(conn) == []

    async def midway(how: str) -> None:
        """A step blocked midway: a row of usage_skill_hours it must add to is locked."""
        made.append(await charge(api, user, skill))
        await asyncio.sleep(1.1)  # the horizon is a second behind the clock
        await usage_service.roll(udb)  # the hour's rows exist now
        made.append(await charge(api, user, skill))
        await asyncio.sleep(1.1)
        async with udb.transaction() as lock:
            await lock.execute(
                text("SELECT 1 FROM usage_skill_hours WHERE skill = :s FOR UPDATE"), {"s": skill}
            )
            steps = [_roll_process(usage_settings) for _ in range(2 if how == "twice" else 1)]
            pids = await _rolls_waiting(udb, len(steps))
            async with udb.connect() as conn:
                half = (
                    await conn.execute(
                        text("SELECT sum(charges) FROM usage_hours WHERE skill = :s"),
                        {"s": skill},
                    )
                ).scalar()
            assert half == len(made) - 1  # this connection does not see the step's rows
            if how == "client killed":
                steps[0].send_signal(signal.SIGKILL)
            elif how == "backend terminated":
                async with udb.connect() as conn:
                    await conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pids[0]})
            await check()  # while the step is stuck or gone: still exact
        for step in steps:
            step.wait(timeout=60)
        await check()

    for how in ("client killed", "backend terminated", "twice"):
        await midway(how)
    await usage_service.roll(udb)
    await check()
    await assert_reconciled(udb)


def _table(html: str, table_id: str) -> list[list[str]]:
    """The rows of the table ``table_id`` of a page, as the text of their cells."""
    body = re.search(rf'<table id="{table_id}".*?<tbody>(.*?)</tbody>', html, re.DOTALL)
    assert body is not None, f"no table {table_id}"
    return [
        [
            re.sub(r"<[^>]+>", "", cell).strip()
            for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.DOTALL)
        ]
        for row in re.findall(r"<tr>(.*?)</tr>", body.group(1), re.DOTALL)
    ]


async def test_the_admin_usage_page_shows_the_figures_as_charts_tables_and_csv(
    uapi: Api, scene: dict
) -> None:
    c = uapi.c
    await c.get("/admin/login")
    csrf = {"x-csrftoken": c.cookies.get("sc_csrf", path="/admin")}
    r = await c.post(
        "/admin/login", data={"api_key": uapi.keys.admin}, headers=csrf, follow_redirects=False
    )
    assert r.status_code == 303, r.text
    r = await c.get("/admin/usage", params={"from": "2026-03-01", "to": "2026-03-31"})
    assert r.status_code == 200, r.text
    html = r.text
    assert html.count("<svg") == 3  # by skill, by category, refunds: drawn by the server
    assert "<script" not in html
    rows = scene["rows"]
    end = T0 + timedelta(days=31)
    by_skill = expected(rows, T0, end, "day", "skill")
    head = re.search(r'<table id="by-skill".*?<thead>(.*?)</thead>', html, re.DOTALL)
    series = re.findall(r'<th scope="col" class="num">(.*?)</th>', head.group(1))
    assert sorted(series) == sorted({group for _, group, *_ in by_skill})
    want = defaultdict(lambda: dict.fromkeys(series, 0))
    for start, group, _, _, consumed, _ in by_skill:  # every day with any activity
        want[start[:10]][group] += consumed
    shown = _table(html, "by-skill")
    assert {row[0]: dict(zip(series, map(int, row[1:]), strict=True)) for row in shown} == want
    users = _table(html, "top-users")
    totals = expected(rows, T0, end, "month", "user")
    assert [u[0] for u in users] == [t[1] for t in sorted(totals, key=lambda t: -t[4])]
    assert f'href="/admin/users?user_id={scene["u1"]}"' in html
    refunds = {row[0]: int(row[1]) for row in _table(html, "refund-totals")}
    assert refunds == {scene["b"]: 15, scene["a"]: 9}
    csv_page = await c.get("/admin/usage.csv", params={"from": "2026-03-01", "to": "2026-03-31"})
    api_csv = await c.get(
        "/v1/usage",
        params={"from": iso(T0), "to": iso(end), "format": "csv"},
        headers=uapi.keys.auth("service"),
    )
    assert csv_page.status_code == 200 and csv_page.text == api_csv.text
    # hostile or wrong filters: the page says what is wrong, never a 500; the CSV alike
    for params, status, said in (
        ({"from": "March"}, 400, "From is a date"),
        ({"to": "9999-12-31"}, 400, "To is a date"),
        ({"from": "0001-01-01"}, 400, "the range may touch at most 744"),
        ({"interval": "week"}, 400, "Interval is one of"),
        ({"user_id": "no spaces"}, 400, "A user id is"),
        ({"member": "x" * 129}, 400, "A member is"),
        ({"skill": "lower"}, 400, "A skill name is"),
        ({"user_id": "nobody-here"}, 404, "No user nobody-here"),
        ({"skill": "NO_SUCH_SKILL"}, 404, "No skill named NO_SUCH_SKILL"),
        ({"from": "2026-03-10", "to": "2026-03-01"}, 400, "must be before to"),
    ):
        bad = await c.get("/admin/usage", params=params)
        assert (bad.status_code, said in bad.text) == (status, True), (params, bad.text[-600:])
        bad_csv = await c.get("/admin/usage.csv", params=params)
        assert bad_csv.status_code == status, (params, bad_csv.text)
    nul = await c.get("/admin/usage?skill=%00")
    assert nul.status_code == 400
    page = await c.get("/admin/users", params={"user_id": scene["fc_user"]})
    assert page.status_code == 200 and 'id="runway"' in page.text and "last-30-days" in page.text


@pytest.mark.one_server
async def test_reconcile_finds_a_row_moved_behind_the_mark_and_a_rebuild_mends_it(
    uapi: Api, udb: Database
) -> None:
    skill = (await uapi.create_skill(cost=4, name=unique("MOVED")))["name"]
    user = unique("moved").lower()
    await credit(uapi, user, 100, "PURCHASE")
    tx = await charge(uapi, user, skill, 2)
    await asyncio.sleep(1.1)
    await usage_service.roll(udb)
    june = {"from": "2026-06-01T00:00:00Z", "to": "2026-07-01T00:00:00Z", "skill": skill}
    await backdate(udb, user, tx["id"], datetime(2026, 6, 1, 12, tzinfo=UTC))  # by hand
    async with udb.connect() as conn:
        found = await usage_repo.problems(conn)
    assert any(skill in p and "2026-06-01T12:00" in p for p in found), found
    assert (await get_usage(uapi, **june))["totals"] == []  # the rollups do not know it
    await usage_service.rebuild(udb)
    async with udb.connect() as conn:
        assert await usage_repo.problems(conn) == []
    totals = (await get_usage(uapi, **june))["totals"]
    assert [(t["charges"], t["consumed"]) for t in totals] == [(1, 8)]


async def test_on_citus_the_log_is_aggregated_on_the_workers(udb: Database) -> None:
    """What an answer reads of the log is summed on each worker over its shards; the
    coordinator only adds up their partial sums."""
    if not servers.citus():
        pytest.skip("about a Citus cluster")
    async with udb.connect() as conn:
        plan = "\n".join(
            row[0]
            for row in await conn.execute(
                text(
                    "EXPLAIN (COSTS OFF) SELECT date_trunc('day', l.created_at, 'UTC'), l.skill,"
                    " sum(l.charges), sum(l.units), sum(l.consumed), sum(l.paid)"
                    " FROM usage_log l WHERE l.created_at >= now() - interval '30 days'"
                    " GROUP BY 1, 2"
                )
            )
        )
    assert "Custom Scan (Citus Adaptive)" in plan, plan
    task = plan.split("->  Task", 1)[1]
    assert "Aggregate" in task and "Node: host=" in task, plan
