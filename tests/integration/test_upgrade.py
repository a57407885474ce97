"""An upgrade keeps everything: a database at 0011 (the last release before the ledger's SQL
was written once), full of data made by that release's own functions, upgraded to head,
keeps every balance, grant, hold, limit, key, event and delivery as it was, each user's
log in its order, and reconcile finds nothing wrong; the writes after it go on where
each user's log left off."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import asyncpg
from alembic import command

from skill_credits.migrate import alembic_config
from skill_credits.settings import Settings
from tests.support.databases import at_revision, problems
from tests.support.run import run_in_thread

CREDIT = "SELECT * FROM sc_credit($1, $2, $3, NULL, $4, $5, $6, $7, $8)"
CHARGE = "SELECT * FROM sc_charge($1, $2, NULL, $3, NULL, $4, $5, NULL, $6)"
HOLD = "SELECT * FROM sc_hold($1, $2, NULL, $3, $4, NULL, $5, NULL, $6)"
CAPTURE = "SELECT * FROM sc_capture($1, $2, $3, NULL, NULL, NULL)"
RELEASE = "SELECT * FROM sc_release($1, $2)"
REFUND = "SELECT * FROM sc_refund($1, $2, NULL, NULL, NULL)"
LIMIT = "SELECT * FROM sc_limit_create($1, $2, NULL, $3, $4)"

# What must come through the upgrade as it was: every row of every table but the users'
# new counter (compared on its own: it must equal each user's newest seq).
KEPT = {
    "users": "SELECT user_id, credits, reserved, low_balance_threshold, next_due, head_grant,"
    " head_free, head_taken, limited, created_at FROM users ORDER BY user_id",
    "grants": "SELECT * FROM grants ORDER BY id",
    "transactions": "SELECT * FROM transactions ORDER BY id",
    "holds": "SELECT * FROM holds ORDER BY id",
    "limits": "SELECT * FROM limits ORDER BY id",
    # every event (a user's and the catalogue's) and delivery, as they were
    "events": "SELECT seq, id, type, user_id, data, created_at FROM {events} ORDER BY seq",
    "event_deliveries": "SELECT event_id, endpoint_id, status, attempts, next_attempt_at,"
    " last_error, delivered_at FROM {deliveries} ORDER BY event_id, endpoint_id",
    "skills": "SELECT * FROM skills ORDER BY id",
    "api_keys": "SELECT * FROM api_keys ORDER BY id",
    "webhook_endpoints": "SELECT * FROM webhook_endpoints ORDER BY id",
}


async def fill(conn: asyncpg.Connection) -> dict[str, str]:
    """A ledger as 0011's functions write it; what the checks after the upgrade need."""
    now = datetime.now(UTC)
    await conn.execute(
        "INSERT INTO skills (name, display_name, cost) VALUES ('UP_A', 'A', 3), ('UP_B', 'B', 7)"
    )
    await conn.execute("INSERT INTO webhook_endpoints (url, secret) VALUES ('http://h/x', 's')")
    await conn.execute(  # an edit of a skill: a skill.changed event, owed to the endpoint
        "INSERT INTO skill_history (skill_id, version, actor, changes)"
        " SELECT id, 1, 'admin', '{\"cost\": [null, 3]}' FROM skills WHERE name = 'UP_A'"
    )
    await conn.execute(
        "INSERT INTO api_keys (id, name, role, key_hash) VALUES ('k1', 'up', 'service', 'x')"
    )
    soon = now + timedelta(seconds=1)
    later = now + timedelta(days=30)
    facts: dict[str, str] = {}
    # "rich": paid and promotional grants, one lapsing; keyed charges; a refund; a limit
    await conn.fetchrow(CREDIT, "rich", "PURCHASE", 500, None, None, None, None, None)
    await conn.fetchrow(CREDIT, "rich", "GRANT", 40, None, None, later, 10, "promotional")
    await conn.fetchrow(CREDIT, "rich", "GRANT", 5, None, None, soon, 5, "promotional")
    key_hash = hashlib.sha256(b"body").digest()
    keyed = await conn.fetchrow(CHARGE, "rich", "UP_A", 4, "key-1", key_hash, None)
    assert keyed["outcome"] == "written", keyed
    facts["keyed"] = keyed["id"]
    for _ in range(5):
        assert (await conn.fetchrow(CHARGE, "rich", "UP_B", 1, None, None, "ann"))[
            "outcome"
        ] == "written"
    refunded = await conn.fetchrow(CHARGE, "rich", "UP_B", 2, "key-2", key_hash, "bob")
    assert (await conn.fetchrow(REFUND, "rich", refunded["id"]))["outcome"] == "written"
    assert (await conn.fetchrow(LIMIT, "rich", "ann", "day", 1000))["outcome"] == "written"
    assert (await conn.fetchrow(CHARGE, "rich", "UP_A", 1, None, None, "ann"))[
        "outcome"
    ] == "written"
    # "holder": a live hold, a captured one, a released one, one that expires
    await conn.fetchrow(CREDIT, "holder", "PURCHASE", 200, None, None, None, None, None)
    live = await conn.fetchrow(HOLD, "holder", "UP_A", 2, 3600, "h-live", None)
    captured = await conn.fetchrow(HOLD, "holder", "UP_B", 3, 3600, None, None)
    released = await conn.fetchrow(HOLD, "holder", "UP_A", 1, 3600, None, None)
    await conn.fetchrow(HOLD, "holder", "UP_A", 1, 1, None, None)
    assert (await conn.fetchrow(CAPTURE, "holder", captured["id"], 2))["outcome"] == "written"
    assert (await conn.fetchrow(RELEASE, "holder", released["id"]))["outcome"] == "written"
    facts["live_hold"] = live["id"]
    # "low": a threshold crossed (events and deliveries), then emptied
    await conn.fetchrow(CREDIT, "low", "PURCHASE", 10, None, None, None, None, None)
    await conn.execute("UPDATE users SET low_balance_threshold = 8 WHERE user_id = 'low'")
    assert (await conn.fetchrow(CHARGE, "low", "UP_A", 3, None, None, None))["outcome"] == (
        "written"
    )
    await conn.fetchrow(CREDIT, "low", "ADJUSTMENT", -1, None, None, None, None, None)
    # "due": a grant and a hold past their expiry, not yet written off at the upgrade
    await conn.fetchrow(CREDIT, "due", "GRANT", 9, None, None, soon, None, None)
    await conn.fetchrow(CREDIT, "due", "PURCHASE", 20, None, None, None, None, None)
    await conn.fetchrow(HOLD, "due", "UP_A", 1, 1, None, None)
    await asyncio.sleep(1.2)  # the short-lived grants and holds are past their expiry
    await conn.fetchval("SELECT sc_touch('holder')")  # written off: the expired hold
    await conn.fetchval("SELECT sc_touch('rich')")  # written off: the lapsed grant
    assert await conn.fetchval("SELECT count(*) FROM events WHERE user_id IS NULL") == 1
    assert await conn.fetchval("SELECT count(*) FROM events") >= 3
    assert await conn.fetchval("SELECT count(*) FROM event_deliveries") >= 3
    return facts


# where the events and their deliveries are: at 0011 one table each, at head two
AT_0011 = {"events": "events", "deliveries": "event_deliveries"}
AT_HEAD = {
    "events": "all_events",
    "deliveries": "(SELECT event_id, endpoint_id, status, attempts, next_attempt_at,"
    " last_error, delivered_at FROM event_deliveries UNION ALL SELECT * FROM"
    " skill_event_deliveries) d",
}


async def snapshot(conn: asyncpg.Connection, tables: dict[str, str]) -> dict[str, list]:
    return {
        name: [tuple(r) for r in await conn.fetch(query.format(**tables))]
        for name, query in KEPT.items()
    }


def test_an_upgrade_to_head_keeps_every_row_and_reconciles(fresh_database) -> None:
    _, url = fresh_database
    settings = Settings(database_url=url)
    run_in_thread(at_revision, url, "0011")
    store: dict = {}

    async def before() -> None:
        conn = await asyncpg.connect(url)
        try:
            store["facts"] = await fill(conn)
            store["before"] = await snapshot(conn, AT_0011)
            assert await conn.fetchval("SELECT count(*) FROM transactions") > 15
        finally:
            await conn.close()

    async def after() -> None:
        conn = await asyncpg.connect(url)
        try:
            assert await snapshot(conn, AT_HEAD) == store["before"]
            counters = await conn.fetch(
                "SELECT u.user_id, u.log_seq, (SELECT max(t.seq) FROM transactions t"
                " WHERE t.user_id = u.user_id) AS newest FROM users u"
            )
            assert all(r["log_seq"] == r["newest"] for r in counters), counters
            facts = store["facts"]
            # a keyed charge inside its window still replays, with the same row
            again = await conn.fetchrow(
                "SELECT * FROM sc_charge('rich', 'UP_A', NULL, 4, NULL, 'key-1', $1, NULL)",
                hashlib.sha256(b"body").digest(),
            )
            assert (again["outcome"], again["id"]) == ("replay", facts["keyed"])
            # the writes after it continue each user's log where it left off
            for user in ("rich", "holder", "low", "due"):
                newest = await conn.fetchval(
                    "SELECT max(seq) FROM transactions WHERE user_id = $1", user
                )
                await conn.fetchrow(
                    "SELECT * FROM sc_credit($1, 'PURCHASE', 1, NULL, NULL, NULL, NULL, NULL,"
                    " NULL)",
                    user,
                )
                rows = await conn.fetch(
                    "SELECT seq, type FROM transactions WHERE user_id = $1 AND seq > $2"
                    " ORDER BY seq",
                    user,
                    newest,
                )
                # "due" had a grant past its expiry: written off first, then credited
                expected = ["EXPIRY", "PURCHASE"] if user == "due" else ["PURCHASE"]
                assert [r["type"] for r in rows] == expected, (user, rows)
                assert [r["seq"] for r in rows] == list(range(newest + 1, newest + 1 + len(rows)))
            capture = await conn.fetchrow(CAPTURE, "holder", facts["live_hold"], 1)
            assert capture["outcome"] == "written", capture
            # new events go on in the one order, each kind to its own table, owed as before
            newest = await conn.fetchval("SELECT max(seq) FROM all_events")
            await conn.execute(
                "SELECT sc_skill_changed(id, 2, now(), 'admin', '{}') FROM skills"
                " WHERE name = 'UP_A'"
            )
            await conn.execute("UPDATE users SET low_balance_threshold = 3 WHERE user_id = 'low'")
            await conn.fetchrow(CREDIT, "low", "PURCHASE", 5, None, None, None, None, None)
            added = await conn.fetch(
                "SELECT type, user_id FROM all_events WHERE seq > $1 ORDER BY seq", newest
            )
            assert [tuple(r) for r in added] == [
                ("skill.changed", None),
                ("balance.recovered", "low"),
            ], added
            owed = await conn.fetchval(
                "SELECT (SELECT count(*) FROM skill_event_deliveries)"
                " + (SELECT count(*) FROM event_deliveries)"
            )
            assert owed == len(store["before"]["event_deliveries"]) + 2
        finally:
            await conn.close()
        assert run_in_thread(asyncio.run, problems(url)) == []

    run_in_thread(asyncio.run, before())
    run_in_thread(command.upgrade, alembic_config(settings), "head")
    run_in_thread(asyncio.run, after())
