"""The ledger's database functions (ledger/sql/), called as the service calls them.

Each test makes its own users and skills on the run's database, so the functions are
checked against a real PostgreSQL under real concurrency: spending order, expiry written
off exactly once, no grant overdrawn, holds that reserve only in grants that outlive them,
refunds of credits that lapsed meanwhile, and the reconcile checks of every grant.
"""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.support.run import unique

CHARGE = (
    "SELECT o.*, (o.sk).version AS s_version, (o.sk).cost AS s_cost"
    " FROM sc_charge($1, $2, $3, $4, $5, $6, $7, $8) o"
)
CREDIT = "SELECT * FROM sc_credit($1, $2, $3, $4, $5, $6, $7, $8, $9)"
HOLD = "SELECT * FROM sc_hold($1, $2, $3, $4, $5, $6, $7, $8)"


@pytest.fixture(scope="module")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    dsn = database_url.replace("postgresql+asyncpg://", "postgresql://")
    p = await asyncpg.create_pool(dsn, min_size=2, max_size=24)
    yield p
    await p.close()


async def new_skill(pool: asyncpg.Pool, cost: int, active: bool = True) -> str:
    name = unique("SQ")
    await pool.execute(
        "INSERT INTO skills (name, display_name, cost, is_active) VALUES ($1, $1, $2, $3)",
        name,
        cost,
        active,
    )
    return name


def new_user() -> str:
    return unique("g").lower()


async def credit(
    pool,
    user: str,
    amount: int,
    *,
    type_: str = "PURCHASE",
    expires_at: datetime | None = None,
    priority: int | None = None,
    category: str | None = None,
    key: str | None = None,
    hash_: bytes | None = None,
):
    return await pool.fetchrow(
        CREDIT, user, type_, amount, None, key, hash_, expires_at, priority, category
    )


async def charge(
    pool,
    user: str,
    skill: str,
    units: int = 1,
    *,
    key=None,
    hash_=None,
    version=None,
    api_key_id=None,
):
    return await pool.fetchrow(CHARGE, user, skill, version, units, None, key, hash_, api_key_id)


async def hold(pool, user: str, skill: str, units: int = 1, ttl: int = 60, key=None):
    return await pool.fetchrow(HOLD, user, skill, None, units, ttl, None, key, None)


def sources(row) -> list[tuple[str, int]]:
    return [(s["grant_id"], s["amount"]) for s in json.loads(row["sources"])]


async def touch(pool, user: str) -> None:
    """What a read does first: write off what is due."""
    await pool.execute("SELECT sc_touch($1)", user)


async def grants(pool, user: str) -> list[asyncpg.Record]:
    """The user's grants in spending order (active ones first in that order), as a read
    sees them (grants_now)."""
    await touch(pool, user)
    return await pool.fetch(
        "SELECT id::text AS id, category, priority, amount, remaining, reserved, expires_at,"
        " status FROM grants_now WHERE user_id = $1"
        " ORDER BY priority, expires_at, created_at, id",
        user,
    )


async def assert_consistent(pool, user: str) -> None:
    """No problems for reconcile (which counts the head's unfolded part), and, as a read
    sees them, credits == sum(amount) == sum(remaining of grants not written off)."""
    problems = await pool.fetch("SELECT * FROM sc_grant_problems() WHERE user_id = $1", user)
    assert [dict(p) for p in problems] == []
    await touch(pool, user)
    row = await pool.fetchrow(
        "SELECT u.credits, u.reserved,"
        " (SELECT coalesce(sum(amount), 0) FROM transactions t WHERE t.user_id = u.user_id)"
        "   AS logged,"
        " (SELECT coalesce(sum(remaining), 0) FROM grants_now g"
        "   WHERE g.user_id = u.user_id AND g.status <> 'expired') AS remaining"
        " FROM users u WHERE u.user_id = $1",
        user,
    )
    assert row["credits"] == row["logged"] == row["remaining"], dict(row)


async def at(instant: datetime) -> None:
    await asyncio.sleep(max(0.0, (instant - datetime.now(UTC)).total_seconds()))


# --- spending order -------------------------------------------------------------------


async def test_debits_draw_in_spending_order_and_say_so(pool) -> None:
    skill = await new_skill(pool, 10)
    user = new_user()
    soon = datetime.now(UTC) + timedelta(days=1)
    later = datetime.now(UTC) + timedelta(days=30)
    never_paid = await credit(pool, user, 8)  # priority 50, never
    month = await credit(pool, user, 6, expires_at=later)  # priority 50, later
    gift = await credit(pool, user, 5, type_="GRANT", expires_at=soon, priority=10)
    day = await credit(pool, user, 4, expires_at=soon)  # priority 50, soon
    assert [g["id"] for g in await grants(pool, user)] == [
        gift["grant_id"],
        day["grant_id"],
        month["grant_id"],
        never_paid["grant_id"],
    ]
    assert [g["category"] for g in await grants(pool, user)] == [
        "promotional",
        "paid",
        "paid",
        "paid",
    ]
    first = await charge(pool, user, skill)
    assert first["outcome"] == "written"
    assert (first["amount"], first["balance_after"]) == (-10, 13)
    assert sources(first) == [(gift["grant_id"], 5), (day["grant_id"], 4), (month["grant_id"], 1)]
    # a negative ADJUSTMENT draws in the same order
    adj = await credit(pool, user, -7, type_="ADJUSTMENT")
    assert adj["outcome"] == "written" and adj["balance_after"] == 6
    assert sources(adj) == [(month["grant_id"], 5), (never_paid["grant_id"], 2)]
    states = {g["id"]: (g["remaining"], g["status"]) for g in await grants(pool, user)}
    assert states == {
        gift["grant_id"]: (0, "depleted"),
        day["grant_id"]: (0, "depleted"),
        month["grant_id"]: (0, "depleted"),
        never_paid["grant_id"]: (6, "active"),
    }
    view = await pool.fetchrow("SELECT * FROM sc_user($1)", user)
    assert (view["credits"], view["paid"], view["promotional"]) == (6, 6, 0)
    await assert_consistent(pool, user)


async def test_refusals_come_in_the_contracts_order(pool) -> None:
    skill = await new_skill(pool, 10)
    off = await new_skill(pool, 10, active=False)
    user = new_user()
    await credit(pool, user, 15)
    key_id = await pool.fetchval(
        "INSERT INTO api_keys (id, name, role, key_hash, revoked_at)"
        " VALUES ($1, $1, 'service', '\\x00', now()) RETURNING id",
        uuid.uuid4().hex,
    )
    done = await charge(pool, user, skill, key="k1", hash_=b"h1")
    assert done["outcome"] == "written"
    # a revoked key beats everything, even a replay
    assert (await charge(pool, user, skill, key="k1", api_key_id=key_id))["outcome"] == (
        "key_revoked"
    )
    replay = await charge(pool, user, "NOPE", key="k1")
    assert (replay["outcome"], replay["id"], bytes(replay["request_hash"])) == (
        "replay",
        done["id"],
        b"h1",
    )
    assert (await charge(pool, user, "NOPE"))["outcome"] == "skill_not_found"
    stale = await charge(pool, "nobody", skill, version=99)
    assert (stale["outcome"], stale["s_version"], stale["s_cost"]) == ("version", 1, 10)
    assert (await charge(pool, "nobody", off))["outcome"] == "skill_disabled"
    assert (await charge(pool, "nobody", skill))["outcome"] == "user_not_found"
    short = await charge(pool, user, skill)
    assert (short["outcome"], short["credits"], short["available"], short["required"]) == (
        "insufficient",
        5,
        5,
        10,
    )
    assert (await credit(pool, "nobody_" + user, -1, type_="ADJUSTMENT"))["outcome"] == (
        "user_not_found"
    )
    assert (await credit(pool, user, -6, type_="ADJUSTMENT"))["required"] == 6
    await assert_consistent(pool, user)


# --- expiry ---------------------------------------------------------------------------


async def test_an_expired_grant_never_pays_and_is_written_off_once(pool) -> None:
    skill = await new_skill(pool, 3)
    user = new_user()
    instant = datetime.now(UTC) + timedelta(seconds=1.5)
    await credit(pool, user, 10)
    lapsing = await credit(pool, user, 20, expires_at=instant, priority=0)
    await pool.execute("UPDATE users SET low_balance_threshold = 15 WHERE user_id = $1", user)
    assert sources(await charge(pool, user, skill)) == [(lapsing["grant_id"], 3)]
    await at(instant + timedelta(milliseconds=20))
    # many requests race at the instant: reads, charges, holds, touches, the worker's list
    calls = []
    for i in range(24):
        kind = i % 4
        if kind == 0:
            calls.append(pool.fetchval("SELECT sc_touch($1)", user))
        elif kind == 1:
            calls.append(charge(pool, user, skill))
        elif kind == 2:
            calls.append(pool.fetchrow("SELECT * FROM sc_user($1)", user))
        else:
            calls.append(hold(pool, user, skill))
    await asyncio.gather(*calls)
    expiries = await pool.fetch(
        "SELECT amount, sources FROM transactions WHERE user_id = $1 AND type = 'EXPIRY'", user
    )
    assert [(e["amount"], sources(e)) for e in expiries] == [(-17, [(lapsing["grant_id"], 17)])]
    g = {r["id"]: r for r in await grants(pool, user)}[lapsing["grant_id"]]
    assert (g["status"], g["remaining"]) == ("expired", 0)
    # nothing ever drew from it after the instant
    drawn_after = await pool.fetch(
        "SELECT t.id FROM transactions t, jsonb_array_elements(t.sources) e"
        " WHERE t.user_id = $1 AND t.type = 'CONSUMPTION' AND t.created_at >= $2"
        " AND e ->> 'grant_id' = $3",
        user,
        instant,
        lapsing["grant_id"],
    )
    assert drawn_after == []
    # the drop below the threshold was an event like any other
    low = await pool.fetch(
        "SELECT data FROM events WHERE user_id = $1 AND type = 'balance.low'", user
    )
    assert len(low) == 1 and json.loads(low[0]["data"])["previous_credits"] == 27
    await assert_consistent(pool, user)


async def test_a_grant_used_up_before_it_expires_writes_no_expiry(pool) -> None:
    skill = await new_skill(pool, 5)
    user = new_user()
    instant = datetime.now(UTC) + timedelta(seconds=0.6)
    await credit(pool, user, 5, expires_at=instant)
    await credit(pool, user, 5)
    assert (await charge(pool, user, skill))["outcome"] == "written"
    await at(instant + timedelta(milliseconds=20))
    assert await pool.fetchval("SELECT sc_touch($1)", user) is True
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM transactions WHERE user_id = $1 AND type = 'EXPIRY'", user
        )
        == 0
    )
    assert await pool.fetchval("SELECT next_due FROM users WHERE user_id = $1", user) is None
    await assert_consistent(pool, user)


async def test_the_worker_finds_every_user_with_something_due(pool) -> None:
    users = [new_user() for _ in range(3)]
    instant = datetime.now(UTC) + timedelta(seconds=0.5)
    for u in users:
        await credit(pool, u, 4, expires_at=instant)
    await at(instant + timedelta(milliseconds=20))
    due = set(await pool.fetch("SELECT sc_due_users(100000)"))
    assert {u for u in users} <= {r[0] for r in due}
    for u in users:
        await pool.fetchval("SELECT sc_touch($1)", u)
        await assert_consistent(pool, u)
    left = {r[0] for r in await pool.fetch("SELECT sc_due_users(100000)")}
    assert not left & set(users)


# --- concurrency ----------------------------------------------------------------------


async def test_exactly_floor_total_over_cost_charges_succeed_across_grants(pool) -> None:
    skill = await new_skill(pool, 3)
    user = new_user()
    later = datetime.now(UTC) + timedelta(days=2)
    await credit(pool, user, 7, priority=10)
    await credit(pool, user, 11, expires_at=later)
    await credit(pool, user, 13, type_="GRANT")
    results = await asyncio.gather(*(charge(pool, user, skill) for _ in range(30)))
    outcomes = [r["outcome"] for r in results]
    assert outcomes.count("written") == 31 // 3
    assert set(outcomes) == {"written", "insufficient"}
    assert all(g["remaining"] >= 0 for g in await grants(pool, user))
    assert sum(g["remaining"] for g in await grants(pool, user)) == 31 - 30
    await assert_consistent(pool, user)


async def test_no_grant_is_overdrawn_by_charges_holds_and_debits_racing(pool) -> None:
    skill = await new_skill(pool, 4)
    user = new_user()
    later = datetime.now(UTC) + timedelta(hours=1)
    for amount, prio in ((9, 20), (9, 50), (9, 80)):
        await credit(pool, user, amount, priority=prio, expires_at=later)
    kinds = (
        lambda: charge(pool, user, skill),
        lambda: hold(pool, user, skill, ttl=30),
        lambda: credit(pool, user, -2, type_="ADJUSTMENT"),
    )
    results = await asyncio.gather(*(kinds[i % 3]() for i in range(24)))
    assert {r["outcome"] for r in results} == {"written", "insufficient"}
    for g in await grants(pool, user):
        assert 0 <= g["reserved"] <= g["remaining"] <= g["amount"]
    await assert_consistent(pool, user)


# --- the charge's first statement (ledger/sql/charge.sql) ------------------------------

# The functions a charge calls when it does not go the one-statement way.
SLOW_WAY = ("sc_lock", "sc_lock_keep", "sc_take", "sc_keyed", "sc_short", "sc_tx_out")


async def charge_counting_calls(
    pool, user: str, skill: str, units: int = 1, *, member=None, limited=False
):
    """A charge (as ``member``, with the hint ``limited``), and how many times it called
    any of SLOW_WAY (track_functions counts calls; what is not yet flushed to the
    statistics includes earlier transactions of the connection, so the count is taken
    before and after)."""
    count = (
        "SELECT coalesce(sum(pg_stat_get_xact_function_calls(oid)), 0)::int"
        " FROM pg_proc WHERE proname = ANY($1::text[])"
    )
    async with pool.acquire() as conn:
        await conn.execute("SET track_functions = 'all'")
        try:
            async with conn.transaction():
                before = await conn.fetchval(count, list(SLOW_WAY))
                row = await conn.fetchrow(
                    "SELECT * FROM sc_charge($1, $2, NULL, $3, NULL, NULL, NULL, NULL, $4, $5)",
                    user,
                    skill,
                    units,
                    member,
                    limited,
                )
                after = await conn.fetchval(count, list(SLOW_WAY))
        finally:
            await conn.execute("RESET track_functions")
    return row, after - before


async def test_a_charge_the_head_covers_is_one_statement(pool) -> None:
    skill = await new_skill(pool, 3)
    user = new_user()
    paid = await credit(pool, user, 10)
    first, calls = await charge_counting_calls(pool, user, skill)
    assert first["outcome"] == "written" and calls > 0  # no head yet: it makes one
    second, calls = await charge_counting_calls(pool, user, skill)
    assert (second["outcome"], second["balance_after"], calls) == ("written", 4, 0)
    assert sources(second) == [(paid["grant_id"], 3)]
    # what the head cannot cover goes the slow way, and answers why
    short, calls = await charge_counting_calls(pool, user, skill, units=2)
    assert (short["outcome"], short["credits"], short["required"]) == ("insufficient", 4, 6)
    assert calls > 0
    await assert_consistent(pool, user)


@pytest.mark.one_server
@pytest.mark.parametrize("keyed", [False, True])
async def test_the_charges_statements_keep_one_generic_plan(pool, keyed: bool) -> None:
    """PL/pgSQL plans a statement for its parameters five times, then keeps one generic
    plan if that is no dearer than the custom ones; a statement whose custom plans fold
    away what the parameters switch off (a limits check behind the hint, a key check
    behind a NULL key) is planned again on every charge, which cost more than the charge
    itself. After a warm-up, each of the charge's statements must run a generic plan:
    ``$n`` in its conditions, never the user's id as a constant."""
    skill = await new_skill(pool, 1)
    users = [new_user() for _ in range(8)]
    for user in users:
        await credit(pool, user, 100)
    plans: list[str] = []

    def listen(_, message) -> None:
        plans.append(str(message))

    async with pool.acquire() as conn:
        conn.add_log_listener(listen)
        try:
            await conn.execute("LOAD 'auto_explain'")
            await conn.execute("SET auto_explain.log_min_duration = 0")
            await conn.execute("SET auto_explain.log_nested_statements = on")
            for n, user in enumerate(users * 2):
                if n == len(users) * 2 - 1:  # the last charge's plans, after the warm-up
                    plans.clear()
                    await conn.execute("SET client_min_messages = log")
                key = f"k-{uuid.uuid4().hex}" if keyed and n % 2 else None
                row = await conn.fetchrow(
                    CHARGE, user, skill, None, 1, None, key, b"h" if key else None, None
                )
                assert row["outcome"] == "written"
        finally:
            await conn.execute("RESET ALL")
            conn.remove_log_listener(listen)
    update = [p for p in plans if "UPDATE users u SET credits" in p]
    assert len(update) == 1, plans
    assert "user_id = $1" in update[0] and users[-1] not in update[0], update[0]


async def test_the_limited_hint_picks_the_way_never_the_answer(pool) -> None:
    """p_limited says which statement a charge tries first: with it, a user with limits
    is charged by one statement after the lock (limits checked and counted, no slow way);
    a wrong hint either way still charges right, and the outcome says the truth."""
    name = await new_skill(pool, 3)
    user, free = new_user(), new_user()
    await credit(pool, user, 100)
    await credit(pool, free, 100)
    made = await pool.fetchrow("SELECT * FROM sc_limit_create($1, 'bob', NULL, 'day', 7)", user)
    assert made["outcome"] == "written"

    async def spent() -> int:
        return await pool.fetchval("SELECT spent FROM limits WHERE user_id = $1", user)

    # no hint: the one statement refuses a user with limits; the slow way charges and
    # counts, and says the user has limits
    row, calls = await charge_counting_calls(pool, user, name, member="bob")
    assert (row["outcome"], row["limited"], calls > 0, await spent()) == ("written", True, True, 3)
    # the hint: one statement after the lock, counted
    row, calls = await charge_counting_calls(pool, user, name, member="bob", limited=True)
    assert (row["outcome"], row["balance_after"], row["limited"], calls) == ("written", 94, True, 0)
    assert await spent() == 6
    # past the limit: the slow way answers 429 and writes nothing
    row, _ = await charge_counting_calls(pool, user, name, member="bob", limited=True)
    assert (row["outcome"], json.loads(row["lim"])["spent"], row["required"]) == ("limited", 6, 3)
    assert await spent() == 6
    # another member passes no limit of bob's
    row, calls = await charge_counting_calls(pool, user, name, member="amy", limited=True)
    assert (row["outcome"], row["balance_after"], calls) == ("written", 91, 0)
    assert await spent() == 6
    # a user without limits, hinted wrong: charged (the slow way), and told so
    for _ in range(2):
        row, _ = await charge_counting_calls(pool, free, name, limited=True)
        assert (row["outcome"], row["limited"]) == ("written", False)
    row, calls = await charge_counting_calls(pool, free, name)
    assert (row["outcome"], row["balance_after"], row["limited"], calls) == (
        "written",
        91,
        False,
        0,
    )
    await assert_consistent(pool, user)
    await assert_consistent(pool, free)


async def test_reads_and_reconcile_see_what_charges_took_from_the_head(pool) -> None:
    skill = await new_skill(pool, 3)
    user = new_user()
    paid = await credit(pool, user, 100)
    for _ in range(4):
        assert (await charge(pool, user, skill))["outcome"] == "written"
    taken = await pool.fetchval("SELECT head_taken FROM users WHERE user_id = $1", user)
    assert taken == 9  # the first charge made the head; three more drew from it
    assert await pool.fetch("SELECT * FROM sc_grant_problems() WHERE user_id = $1", user) == []
    view = await pool.fetchrow("SELECT * FROM sc_user($1)", user)
    assert (view["credits"], view["paid"]) == (88, 88)
    assert [(g["id"], g["remaining"]) for g in await grants(pool, user)] == [(paid["grant_id"], 88)]
    await assert_consistent(pool, user)


async def test_a_grant_that_comes_first_takes_over_from_the_head(pool) -> None:
    skill = await new_skill(pool, 3)
    user = new_user()
    paid = await credit(pool, user, 100)
    await charge(pool, user, skill)
    await charge(pool, user, skill)
    gift = await credit(pool, user, 4, type_="GRANT", priority=10)
    spans = [await charge(pool, user, skill) for _ in range(2)]
    assert sources(spans[0]) == [(gift["grant_id"], 3)]
    assert sources(spans[1]) == [(gift["grant_id"], 1), (paid["grant_id"], 2)]
    after = await charge(pool, user, skill)
    assert sources(after) == [(paid["grant_id"], 3)]
    await assert_consistent(pool, user)


async def test_concurrent_charges_and_credits_keep_the_spending_order(pool) -> None:
    """Charges race credits of grants that come first. In the order the user's writes
    took effect (the log's seq), every charge drew from the first grant that had credits
    then: a charge never used a head that a credit had just overtaken."""
    skill = await new_skill(pool, 1)
    user = new_user()
    await credit(pool, user, 1000, priority=50)
    await charge(pool, user, skill)  # the head exists before the race

    async def gift(priority: int) -> None:
        await credit(pool, user, 3, type_="GRANT", priority=priority)

    work = [charge(pool, user, skill) for _ in range(60)]
    for i, priority in enumerate((40, 30, 20, 10, 5)):
        work.insert(10 + 10 * i, gift(priority))
    await asyncio.gather(*work)

    rows = await pool.fetch(
        "SELECT type, grant_id::text AS grant_id, amount, sources::text AS sources"
        " FROM transactions WHERE user_id = $1 ORDER BY seq",
        user,
    )
    made = await pool.fetch("SELECT id::text AS id, priority FROM grants WHERE user_id = $1", user)
    priority = {g["id"]: g["priority"] for g in made}
    left: dict[str, int] = {}
    for row in rows:
        if row["grant_id"] is not None:
            left[row["grant_id"]] = row["amount"]
            continue
        first = min((g for g, n in left.items() if n > 0), key=priority.__getitem__)
        assert [(s["grant_id"], s["amount"]) for s in json.loads(row["sources"])] == [(first, 1)]
        left[first] -= 1
    assert sum(1 for r in rows if r["type"] == "CONSUMPTION") == 61
    await assert_consistent(pool, user)


async def test_a_repeat_that_waited_for_its_original_answers_the_replay(pool) -> None:
    """The original takes the slow way and holds the user's lock; the repeat finds no row
    yet, waits for the lock, and then must answer the replay, not a 402 for the credits
    the original spent."""
    skill = await new_skill(pool, 3)
    user = new_user()
    await credit(pool, user, 3)  # no head yet: both go the slow way
    async with pool.acquire() as conn:
        original = conn.transaction()
        await original.start()
        first = await conn.fetchrow(CHARGE, user, skill, None, 1, None, "K", b"x", None)
        repeat = asyncio.create_task(charge(pool, user, skill, key="K", hash_=b"x"))
        await asyncio.sleep(0.5)
        assert not repeat.done()  # it waits for the original's lock
        await original.commit()
    again = await repeat
    assert (first["outcome"], again["outcome"], again["id"]) == ("written", "replay", first["id"])
    await assert_consistent(pool, user)


@pytest.mark.parametrize("head", [True, False])
async def test_concurrent_repeats_of_one_key_write_once(pool, head: bool) -> None:
    """Repeats of one key racing, on the one statement (a head exists) or the slow way:
    one writes; the unique index stops the others that found no row yet, having written
    nothing (the service then calls again, which answers the replay)."""
    skill = await new_skill(pool, 1)
    user = new_user()
    await credit(pool, user, 100 + head)
    if head:
        await charge(pool, user, skill)
    results = await asyncio.gather(
        *(charge(pool, user, skill, key="raced", hash_=b"x") for _ in range(12)),
        return_exceptions=True,
    )
    written = [r for r in results if not isinstance(r, BaseException) and r["outcome"] == "written"]
    lost = [r for r in results if isinstance(r, asyncpg.UniqueViolationError)]
    assert len(written) == 1
    # the index; a Citus worker names its shard's (transactions_idempotency_102059), at times
    # in the message alone
    named = re.compile(r"\btransactions_idempotency(_\d+)?\b")
    assert all(named.search(e.constraint_name or str(e)) for e in lost)
    assert (
        len(written)
        + len(lost)
        + sum(1 for r in results if not isinstance(r, BaseException) and r["outcome"] == "replay")
        == 12
    )
    again = await charge(pool, user, skill, key="raced", hash_=b"x")
    assert (again["outcome"], again["id"]) == ("replay", written[0]["id"])
    assert await pool.fetchval("SELECT credits FROM users WHERE user_id = $1", user) == 99
    await assert_consistent(pool, user)


# --- holds and grants -----------------------------------------------------------------


async def test_holds_reserve_only_in_grants_that_outlive_them(pool) -> None:
    skill = await new_skill(pool, 10)
    user = new_user()
    soon = datetime.now(UTC) + timedelta(seconds=30)
    short = await credit(pool, user, 50, expires_at=soon, priority=0)
    long = await credit(pool, user, 15)
    # a 60 s hold may use only the grant that never expires
    refused = await hold(pool, user, skill, units=2, ttl=60)
    assert (refused["outcome"], refused["credits"], refused["available"], refused["required"]) == (
        "insufficient",
        65,
        15,
        20,
    )
    h = await hold(pool, user, skill, units=1, ttl=60)
    assert h["outcome"] == "written" and sources(h) == [(long["grant_id"], 10)]
    # a 10 s hold goes to the first grant in spending order
    h2 = await hold(pool, user, skill, units=2, ttl=10)
    assert sources(h2) == [(short["grant_id"], 20)]
    by_id = {g["id"]: g for g in await grants(pool, user)}
    assert (by_id[long["grant_id"]]["reserved"], by_id[short["grant_id"]]["reserved"]) == (10, 20)
    # a charge draws at most remaining - reserved from each grant
    c = await charge(pool, user, skill, units=3)
    assert sources(c) == [(short["grant_id"], 30)]
    c = await charge(pool, user, skill, units=1)
    assert (c["outcome"], c["available"]) == ("insufficient", 5)
    # capture draws from the hold's grant, frees the rest
    cap = await pool.fetchrow(
        "SELECT * FROM sc_capture($1, $2::uuid, 1, NULL, NULL, NULL)", user, h2["id"]
    )
    assert cap["outcome"] == "written" and sources(cap) == [(short["grant_id"], 10)]
    again = await pool.fetchrow(
        "SELECT * FROM sc_capture($1, $2::uuid, 1, NULL, NULL, NULL)", user, h2["id"]
    )
    assert (again["outcome"], again["hold_status"]) == ("hold_not_active", "captured")
    rel = await pool.fetchrow("SELECT * FROM sc_release($1, $2::uuid)", user, h["id"])
    assert (rel["outcome"], rel["status"]) == ("written", "released")
    by_id = {g["id"]: g for g in await grants(pool, user)}
    assert (by_id[long["grant_id"]]["reserved"], by_id[short["grant_id"]]["reserved"]) == (0, 0)
    assert (by_id[long["grant_id"]]["remaining"], by_id[short["grant_id"]]["remaining"]) == (15, 10)
    assert (await pool.fetchrow("SELECT * FROM sc_release($1, $2::uuid)", "x", h["id"]))[
        "outcome"
    ] == "hold_not_found"
    await assert_consistent(pool, user)


async def test_an_expired_hold_gives_its_reservation_back(pool) -> None:
    skill = await new_skill(pool, 10)
    user = new_user()
    await credit(pool, user, 10)
    h = await hold(pool, user, skill, ttl=1)
    assert (await charge(pool, user, skill))["outcome"] == "insufficient"
    await asyncio.sleep(1.1)
    assert (await charge(pool, user, skill))["outcome"] == "written"
    status = await pool.fetchval("SELECT status FROM holds WHERE id = $1::uuid", h["id"])
    assert status == "expired"
    cap = await pool.fetchrow(
        "SELECT * FROM sc_capture($1, $2::uuid, 1, NULL, NULL, NULL)", user, h["id"]
    )
    assert (cap["outcome"], cap["hold_status"]) == ("hold_not_active", "expired")
    await assert_consistent(pool, user)


# --- refunds --------------------------------------------------------------------------


async def test_a_refund_gives_back_and_writes_off_what_lapsed_meanwhile(pool) -> None:
    skill = await new_skill(pool, 10)
    user = new_user()
    instant = datetime.now(UTC) + timedelta(seconds=0.8)
    lapsing = await credit(pool, user, 6, expires_at=instant, priority=0)
    lasting = await credit(pool, user, 10)
    c = await charge(pool, user, skill)
    assert sources(c) == [(lapsing["grant_id"], 6), (lasting["grant_id"], 4)]
    await at(instant + timedelta(milliseconds=20))
    r = await pool.fetchrow(
        "SELECT * FROM sc_refund($1, $2::uuid, NULL, NULL, NULL)", user, c["id"]
    )
    assert (r["outcome"], r["type"], r["amount"]) == ("written", "REFUND", 10)
    assert sources(r) == sources(c)
    log = await pool.fetch(
        "SELECT type, amount, balance_after, sources FROM transactions WHERE user_id = $1"
        " ORDER BY seq",
        user,
    )
    assert [(t["type"], t["amount"], t["balance_after"]) for t in log] == [
        ("PURCHASE", 6, 6),
        ("PURCHASE", 10, 16),
        ("CONSUMPTION", -10, 6),
        ("REFUND", 10, 16),
        ("EXPIRY", -6, 10),
    ]
    assert sources(log[-1]) == [(lapsing["grant_id"], 6)]
    by_id = {g["id"]: g for g in await grants(pool, user)}
    assert (by_id[lapsing["grant_id"]]["status"], by_id[lapsing["grant_id"]]["remaining"]) == (
        "expired",
        0,
    )
    assert by_id[lasting["grant_id"]]["remaining"] == 10
    twice = await pool.fetchrow(
        "SELECT * FROM sc_refund($1, $2::uuid, NULL, NULL, NULL)", user, c["id"]
    )
    assert twice["outcome"] == "already_refunded"
    purchase = await pool.fetchrow(
        "SELECT * FROM sc_refund($1, $2::uuid, NULL, NULL, NULL)", user, lasting["id"]
    )
    assert (purchase["outcome"], purchase["type"]) == ("not_refundable", "PURCHASE")
    await assert_consistent(pool, user)


async def test_a_refund_that_began_before_the_expiry_never_revives_the_grant(pool) -> None:
    """A refund whose transaction began before a grant's expiry (so its now() is before
    it) runs after another request wrote the grant off: the part that grant paid is
    written off again at once, and the grant stays expired — never active, never written
    off a second time later."""
    skill = await new_skill(pool, 20)
    user = new_user()
    instant = datetime.now(UTC) + timedelta(seconds=1)
    gift = await credit(pool, user, 50, expires_at=instant)
    c = await charge(pool, user, skill)
    assert sources(c) == [(gift["grant_id"], 20)]
    async with pool.acquire() as early:
        async with early.transaction():
            await early.fetchval("SELECT now()")  # this transaction's now(): before it
            await at(instant + timedelta(milliseconds=50))
            assert await pool.fetchval("SELECT sc_touch($1)", user)  # writes it off
            r = await early.fetchrow(
                "SELECT * FROM sc_refund($1, $2::uuid, NULL, NULL, NULL)", user, c["id"]
            )
            assert (r["outcome"], r["type"]) == ("written", "REFUND")
    (g,) = await grants(pool, user)
    assert (g["status"], g["remaining"]) == ("expired", 0)
    assert await pool.fetchval("SELECT sc_touch($1)", user)
    log = await pool.fetch(
        "SELECT type, amount FROM transactions WHERE user_id = $1 ORDER BY seq", user
    )
    assert [(t["type"], t["amount"]) for t in log] == [
        ("PURCHASE", 50),
        ("CONSUMPTION", -20),
        ("EXPIRY", -30),
        ("REFUND", 20),
        ("EXPIRY", -20),
    ]
    await assert_consistent(pool, user)


# --- reconcile ------------------------------------------------------------------------


async def test_reconcile_finds_a_grant_out_of_step(pool) -> None:
    skill = await new_skill(pool, 2)
    user = new_user()
    g = await credit(pool, user, 10)
    await charge(pool, user, skill)
    await assert_consistent(pool, user)
    async with pool.acquire() as conn:
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute(
                "UPDATE grants SET remaining = remaining + 1 WHERE id = $1::uuid", g["grant_id"]
            )
            problems = await conn.fetch(
                "SELECT * FROM sc_grant_problems() WHERE user_id = $1", user
            )
        finally:
            await tr.rollback()
    assert [p["grant_id"] for p in problems] == [g["grant_id"], None]
    assert "remaining 9 but amount 10 and the log's sources give 8" in problems[0]["problem"]


# --- the upgrade ----------------------------------------------------------------------

LEGACY = [
    "INSERT INTO skills (name, display_name, cost) VALUES ('OLD', 'Old', 5)",
    "INSERT INTO users (user_id, credits) VALUES ('rich', 40), ('broke', 0)",
    "INSERT INTO transactions (user_id, type, amount, balance_after)"
    " VALUES ('rich', 'PURCHASE', 50, 50), ('broke', 'GRANT', 5, 5)",
    "INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill, units,"
    " unit_cost) SELECT u, 'CONSUMPTION', a, b, id, name, n, 5 FROM skills,"
    " (VALUES ('rich', -10, 40, 2), ('broke', -5, 0, 1)) v(u, a, b, n) WHERE name = 'OLD'",
    "INSERT INTO holds (user_id, skill_id, skill, skill_version, units, unit_cost, amount,"
    " expires_at) SELECT 'rich', id, name, 1, u, 5, 5 * u, now() + make_interval(secs => s)"
    " FROM skills, (VALUES (3, 600), (1, -5)) v(u, s) WHERE name = 'OLD'",
]


def test_the_upgrade_turns_each_balance_into_one_grant(fresh_database) -> None:
    """Down to 0005, a ledger as it was (a live hold, an expired one), up again: every
    balance and reservation is one paid grant that never expires, and a refund of a charge
    from before goes back to it."""
    from alembic import command

    from skill_credits.migrate import alembic_config
    from skill_credits.settings import Settings
    from tests.support.databases import at_revision
    from tests.support.run import run_in_thread

    _, url = fresh_database
    settings = Settings(database_url=url)
    run_in_thread(at_revision, url, "0011")
    run_in_thread(command.downgrade, alembic_config(settings), "0005")

    async def before() -> None:
        conn = await asyncpg.connect(url)
        try:
            for statement in LEGACY:
                await conn.execute(statement)
        finally:
            await conn.close()

    async def after() -> None:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT user_id, category, priority, amount, remaining, reserved, expires_at,"
                " status FROM grants ORDER BY user_id"
            )
            assert [tuple(r) for r in rows] == [
                ("broke", "paid", 50, 0, 0, 0, None, "depleted"),
                ("rich", "paid", 50, 40, 40, 15, None, "active"),
            ]
            users = await conn.fetch(
                "SELECT user_id, credits, reserved, next_due IS NOT NULL AS due FROM users"
                " ORDER BY user_id"
            )
            assert [tuple(u) for u in users] == [("broke", 0, 0, False), ("rich", 40, 15, True)]
            assert await conn.fetch("SELECT * FROM sc_grant_problems()") == []
            statuses = await conn.fetch("SELECT status FROM holds ORDER BY amount")
            assert [s["status"] for s in statuses] == ["expired", "held"]
            old = await conn.fetchval(
                "SELECT id FROM transactions WHERE user_id = 'broke' AND type = 'CONSUMPTION'"
            )
            r = await conn.fetchrow("SELECT * FROM sc_refund('broke', $1, NULL, NULL, NULL)", old)
            assert (r["outcome"], r["balance_after"]) == ("written", 5)
            assert await conn.fetch("SELECT * FROM sc_grant_problems()") == []
            view = await conn.fetchrow("SELECT * FROM sc_user('broke')")
            assert (view["credits"], view["paid"], view["promotional"]) == (5, 5, 0)
        finally:
            await conn.close()

    run_in_thread(asyncio.run, before())
    run_in_thread(command.upgrade, alembic_config(settings), "head")
    run_in_thread(asyncio.run, after())


def test_the_downgrade_folds_every_head_into_its_grant(fresh_database) -> None:
    """Charges drawn from a head and not yet folded; down to 0006 (version 1's functions,
    no head): every grant says what it has, and v1's reconcile is clean; up again."""
    from alembic import command

    from skill_credits.migrate import alembic_config
    from skill_credits.settings import Settings
    from tests.support.databases import at_revision
    from tests.support.run import run_in_thread

    _, url = fresh_database
    settings = Settings(database_url=url)
    run_in_thread(at_revision, url, "0011")

    async def charged() -> None:
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("INSERT INTO skills (name, display_name, cost) VALUES ('D', 'D', 2)")
            await credit(conn, "down", 10)
            for _ in range(3):
                assert (await charge(conn, "down", "D"))["outcome"] == "written"
            assert await conn.fetchval("SELECT head_taken FROM users") == 4
        finally:
            await conn.close()

    async def folded() -> None:
        conn = await asyncpg.connect(url)
        try:
            assert [tuple(r) for r in await conn.fetch("SELECT remaining FROM grants")] == [(4,)]
            assert await conn.fetchval("SELECT credits FROM users") == 4
            assert await conn.fetch("SELECT * FROM sc_grant_problems()") == []
            assert (await charge(conn, "down", "D"))["balance_after"] == 2
        finally:
            await conn.close()

    run_in_thread(asyncio.run, charged())
    run_in_thread(command.downgrade, alembic_config(settings), "0006")
    run_in_thread(asyncio.run, folded())
    run_in_thread(command.upgrade, alembic_config(settings), "head")


@pytest.mark.parametrize(
    ("down_to", "there"), [("0009", "ledger_v4.sql"), ("0007", "ledger_v2.sql")]
)
def test_down_the_charge_is_the_earlier_versions_again(fresh_database, down_to, there) -> None:
    """0008 and 0010 replace only sc_charge: from 0011 down to 0009 (or 0007) its body is
    ledger_v4.sql's (ledger_v2.sql's), word for word, and a charge that spans grants is
    still exact; up to head, the present's (ledger/sql/charge.sql)."""
    from alembic import command

    from skill_credits.ledger.sql import commands
    from skill_credits.migrate import alembic_config
    from skill_credits.migrations.sql import statements
    from skill_credits.settings import Settings
    from tests.support.databases import at_revision
    from tests.support.run import run_in_thread

    def body(name: str) -> str:
        found = commands(name) if name == "charge.sql" else statements(name)
        (command_,) = [c for c in found if "CREATE OR REPLACE FUNCTION sc_charge(" in c]
        return command_.split("$$")[1]

    _, url = fresh_database
    settings = Settings(database_url=url)
    run_in_thread(at_revision, url, "0011")

    async def check(version: str, user: str) -> None:
        conn = await asyncpg.connect(url)
        try:
            source = await conn.fetchval("SELECT prosrc FROM pg_proc WHERE proname = 'sc_charge'")
            assert source == body(version)
            if not await conn.fetchval("SELECT count(*) FROM skills"):
                await conn.execute(
                    "INSERT INTO skills (name, display_name, cost) VALUES ('S', 'S', 2)"
                )
            await credit(conn, user, 1, type_="GRANT", priority=10)
            await credit(conn, user, 10)
            r = await charge(conn, user, "S")
            assert (r["outcome"], r["balance_after"]) == ("written", 9)
            assert [s["amount"] for s in json.loads(r["sources"])] == [1, 1]
            assert await conn.fetch("SELECT * FROM sc_grant_problems()") == []
        finally:
            await conn.close()

    run_in_thread(asyncio.run, check("ledger_v5.sql", "up"))
    run_in_thread(command.downgrade, alembic_config(settings), down_to)
    run_in_thread(asyncio.run, check(there, "down"))
    run_in_thread(command.upgrade, alembic_config(settings), "head")
    run_in_thread(asyncio.run, check("charge.sql", "again"))
