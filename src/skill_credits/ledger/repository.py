"""Every query of the ledger.

The writes are single statements (CTEs): each guards the balance in its WHERE,
changes it and inserts the log row, so in autocommit each is its own transaction and
one round trip. ``users.hold_seq`` makes them safe against concurrent hold changes: a
statement that waited for a hold change sees a new ``hold_seq`` on re-check and writes
nothing, and its caller retries with a fresh snapshot.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from skill_credits.db import Connection, keyset_page
from skill_credits.ledger.schemas import Hold, Transaction, User
from skill_credits.pagination import decode_cursor, encode_cursor
from skill_credits.skills.repository import skill_columns

Row = Any  # a row of Connection.execute: attribute access by column name

TX_COLUMNS = (
    "id::text AS id, user_id, type, amount, balance_after, skill, units, unit_cost,"
    " description, refund_of::text AS refund_of, created_at"
)
RESERVED = (
    "(SELECT coalesce(sum(h.amount), 0)::bigint FROM holds h"
    " WHERE h.user_id = :user_id AND h.status = 'held' AND h.expires_at > now())"
)
UNCHANGED_HOLDS = "users.hold_seq = (SELECT u0.hold_seq FROM users u0 WHERE u0.user_id = :user_id)"
KEY_UNUSED = (
    "NOT EXISTS (SELECT 1 FROM transactions k"
    " WHERE k.user_id = :user_id AND k.idempotency_key = CAST(:key AS text))"
)

# The caller's API key is still live (see skill_credits.auth: deferred auth on the charge route).
KEY_LIVE = (
    "EXISTS (SELECT 1 FROM api_keys a"
    " WHERE a.id = CAST(:api_key_id AS text) AND a.revoked_at IS NULL)"
)

# The charge answers with the skill it was priced at (``s_``-prefixed columns, see
# skills.repository.skill_columns), so a cache that was behind can be refreshed.
CHARGE = text(f"""
WITH s AS (
    SELECT * FROM skills
    WHERE name = :skill AND is_active
      AND (CAST(:version AS integer) IS NULL OR version = CAST(:version AS integer))
), u AS (
    UPDATE users SET credits = users.credits - s.cost * CAST(:units AS integer)
    FROM s
    WHERE users.user_id = :user_id
      AND {UNCHANGED_HOLDS}
      AND users.credits - {RESERVED} >= s.cost * CAST(:units AS integer)
      AND {KEY_UNUSED}
      AND {KEY_LIVE}
    RETURNING users.credits AS u_credits, s.*
), t AS (
    INSERT INTO transactions (user_id, type, amount, balance_after, skill_id, skill, units,
                              unit_cost, description, idempotency_key, request_hash)
    SELECT :user_id, 'CONSUMPTION', -(u.cost * CAST(:units AS integer)), u.u_credits, u.id,
           u.name, CAST(:units AS integer), u.cost, CAST(:description AS text),
           CAST(:key AS text), CAST(:hash AS bytea)
    FROM u
    RETURNING {TX_COLUMNS}
)
SELECT t.*, {skill_columns("u", "s_")}
FROM t, u
""")

CREDIT = text(f"""
WITH u AS (
    INSERT INTO users AS usr (user_id, credits)
    SELECT :user_id, CAST(:amount AS bigint)
    WHERE {KEY_UNUSED}
    ON CONFLICT (user_id) DO UPDATE SET credits = usr.credits + EXCLUDED.credits
    RETURNING usr.credits
)
INSERT INTO transactions (user_id, type, amount, balance_after, description, idempotency_key,
                          request_hash)
SELECT :user_id, :type, CAST(:amount AS bigint), u.credits, CAST(:description AS text),
       CAST(:key AS text), CAST(:hash AS bytea)
FROM u
RETURNING {TX_COLUMNS}
""")

DEBIT = text(f"""
WITH u AS (
    UPDATE users SET credits = users.credits + CAST(:amount AS bigint)
    WHERE users.user_id = :user_id
      AND {UNCHANGED_HOLDS}
      AND users.credits - {RESERVED} >= -CAST(:amount AS bigint)
      AND {KEY_UNUSED}
    RETURNING users.credits
)
INSERT INTO transactions (user_id, type, amount, balance_after, description, idempotency_key,
                          request_hash)
SELECT :user_id, :type, CAST(:amount AS bigint), u.credits, CAST(:description AS text),
       CAST(:key AS text), CAST(:hash AS bytea)
FROM u
RETURNING {TX_COLUMNS}
""")

REFUND = text(f"""
WITH o AS (
    SELECT o.id, o.user_id, o.amount FROM transactions o
    WHERE o.id = CAST(:id AS uuid) AND o.type = 'CONSUMPTION'
      AND NOT EXISTS (SELECT 1 FROM transactions r WHERE r.refund_of = o.id)
      AND NOT EXISTS (SELECT 1 FROM transactions k
                      WHERE k.user_id = o.user_id AND k.idempotency_key = CAST(:key AS text))
), u AS (
    UPDATE users SET credits = users.credits - o.amount
    FROM o
    WHERE users.user_id = o.user_id
    RETURNING users.user_id, users.credits, o.id AS refund_of, o.amount
)
INSERT INTO transactions (user_id, type, amount, balance_after, refund_of, description,
                          idempotency_key, request_hash)
SELECT u.user_id, 'REFUND', -u.amount, u.credits, u.refund_of, CAST(:description AS text),
       CAST(:key AS text), CAST(:hash AS bytea)
FROM u
RETURNING {TX_COLUMNS}
""")


def transaction_from_row(row: Any) -> Transaction:
    return Transaction(
        id=row.id,
        user_id=row.user_id,
        type=row.type,
        amount=row.amount,
        balance_after=row.balance_after,
        skill=row.skill,
        units=row.units,
        unit_cost=row.unit_cost,
        description=row.description,
        refund_of=row.refund_of,
        created_at=row.created_at,
    )


async def charge(conn: Connection, params: dict[str, Any]) -> Row | None:
    return (await conn.execute(CHARGE, params)).first()


async def credit(conn: Connection, params: dict[str, Any]) -> Row | None:
    statement = CREDIT if params["amount"] > 0 else DEBIT
    return (await conn.execute(statement, params)).first()


async def refund(conn: Connection, params: dict[str, Any]) -> Row | None:
    return (await conn.execute(REFUND, params)).first()


BY_IDEMPOTENCY_KEY = text(
    f"SELECT {TX_COLUMNS}, request_hash FROM transactions"
    " WHERE user_id = :user_id AND idempotency_key = :key"
)


async def by_idempotency_key(conn: Connection, user_id: str, key: str) -> Row | None:
    return (await conn.execute(BY_IDEMPOTENCY_KEY, {"user_id": user_id, "key": key})).first()


async def set_low_balance_threshold(conn: Connection, user_id: str, threshold: int | None) -> bool:
    """False when there is no such user (the events' low-balance threshold is a user's)."""
    row = (
        await conn.execute(
            text(
                "UPDATE users SET low_balance_threshold = :t WHERE user_id = :user_id"
                " RETURNING user_id"
            ),
            {"t": threshold, "user_id": user_id},
        )
    ).first()
    return row is not None


async def get_user(conn: Connection, user_id: str) -> User | None:
    row = (
        await conn.execute(
            text(
                f"SELECT user_id, credits, {RESERVED} AS reserved, created_at"
                " FROM users WHERE user_id = :user_id"
            ),
            {"user_id": user_id},
        )
    ).first()
    if row is None:
        return None
    return User(
        user_id=row.user_id,
        credits=row.credits,
        reserved=row.reserved,
        available=row.credits - row.reserved,
        created_at=row.created_at,
    )


async def get_transaction(conn: Connection, tx_id: str) -> Row | None:
    return (
        await conn.execute(
            text(
                f"SELECT {TX_COLUMNS},"
                " EXISTS (SELECT 1 FROM transactions r WHERE r.refund_of = t.id) AS refunded"
                " FROM transactions t WHERE id = CAST(:id AS uuid)"
            ),
            {"id": tx_id},
        )
    ).first()


async def page(
    conn: Connection, user_id: str, limit: int, before_seq: int | None, tx_type: str | None
) -> tuple[list[Transaction], str | None]:
    """Keyset page, newest first: an index range scan on (user_id, seq DESC)."""
    rows, next_cursor = await keyset_page(
        conn, "transactions", TX_COLUMNS, {"user_id": user_id, "type": tx_type}, before_seq, limit
    )
    return [transaction_from_row(r) for r in rows], next_cursor


async def reconcile(conn: Connection) -> list[str]:
    """Every way the stored balances and the log disagree, as human-readable lines."""
    problems: list[str] = []
    rows = await conn.execute(
        text(
            "SELECT u.user_id, u.credits, coalesce(sum(t.amount), 0) AS total"
            " FROM users u LEFT JOIN transactions t ON t.user_id = u.user_id"
            " GROUP BY u.user_id, u.credits HAVING u.credits <> coalesce(sum(t.amount), 0)"
        )
    )
    for r in rows:
        problems.append(f"user {r.user_id}: credits {r.credits} but the log sums to {r.total}")
    rows = await conn.execute(
        text(
            "SELECT id, user_id, balance_after, running FROM ("
            "  SELECT id, user_id, balance_after,"
            "         sum(amount) OVER (PARTITION BY user_id ORDER BY seq) AS running"
            "  FROM transactions) x WHERE balance_after <> running"
        )
    )
    for r in rows:
        problems.append(
            f"transaction {r.id} of {r.user_id}: balance_after {r.balance_after}"
            f" but the log up to it sums to {r.running}"
        )
    rows = await conn.execute(
        text(
            "SELECT u.user_id, u.credits, latest.balance_after FROM users u"
            " JOIN LATERAL (SELECT balance_after FROM transactions t WHERE t.user_id = u.user_id"
            "               ORDER BY seq DESC LIMIT 1) latest ON true"
            " WHERE latest.balance_after <> u.credits"
        )
    )
    for r in rows:
        problems.append(
            f"user {r.user_id}: credits {r.credits} but the last balance_after is {r.balance_after}"
        )
    rows = await conn.execute(
        text(
            "SELECT h.id::text AS id, h.status, t.id AS tx, t.unit_cost, t.units,"
            "       h.unit_cost AS price, h.units AS reserved"
            " FROM holds h LEFT JOIN transactions t ON t.id = h.transaction_id"
            " WHERE (h.status = 'captured') <> (t.id IS NOT NULL)"
            "    OR t.unit_cost <> h.unit_cost OR t.units > h.units"
        )
    )
    for r in rows:
        problems.append(
            f"hold {r.id} ({r.status}): its capture does not match (transaction {r.tx},"
            f" {r.units} x {r.unit_cost} against {r.reserved} reserved at {r.price})"
        )
    return problems


async def refunded_among(conn: Connection, tx_ids: list[str]) -> set[str]:
    """Which of ``tx_ids`` have a refund already."""
    if not tx_ids:
        return set()
    rows = await conn.execute(
        text(
            "SELECT refund_of::text AS id FROM transactions"
            " WHERE refund_of = ANY(CAST(:ids AS uuid[]))"
        ),
        {"ids": tx_ids},
    )
    return {r.id for r in rows}


async def charges_among(conn: Connection, tx_ids: list[str]) -> dict[str, Row]:
    """The ``CONSUMPTION`` rows among ``tx_ids`` (what refunds refunded), by id, with the
    ``seq`` a cursor needs to open the page that starts at one."""
    if not tx_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT id::text AS id, skill, units, unit_cost, seq FROM transactions"
            " WHERE id = ANY(CAST(:ids AS uuid[])) AND type = 'CONSUMPTION'"
        ),
        {"ids": tx_ids},
    )
    return {r.id: r for r in rows}


HOLD_COLUMNS = (
    "id::text AS id, user_id, skill, skill_version, units, unit_cost, amount,"
    " CASE WHEN status = 'held' AND expires_at <= now() THEN 'expired' ELSE status END AS status,"
    " expires_at, created_at"
)

# Reserve cost x units at the current (version-checked) price. A new hold makes the
# user's reserved sum grow, so it bumps hold_seq: a charge or hold that raced it re-reads.
HOLD = text(f"""
WITH s AS (
    SELECT id, name, cost, version FROM skills
    WHERE name = :skill AND is_active
      AND (CAST(:version AS integer) IS NULL OR version = CAST(:version AS integer))
), u AS (
    UPDATE users SET hold_seq = users.hold_seq + 1
    FROM s
    WHERE users.user_id = :user_id
      AND {UNCHANGED_HOLDS}
      AND users.credits - {RESERVED} >= s.cost * CAST(:units AS integer)
      AND NOT EXISTS (SELECT 1 FROM holds k
                      WHERE k.user_id = :user_id AND k.idempotency_key = CAST(:key AS text))
    RETURNING s.id AS s_id, s.name AS s_name, s.cost AS s_cost, s.version AS s_version
)
INSERT INTO holds (user_id, skill_id, skill, skill_version, units, unit_cost, amount,
                        description, expires_at, idempotency_key, request_hash)
SELECT :user_id, u.s_id, u.s_name, u.s_version, CAST(:units AS integer), u.s_cost,
       u.s_cost * CAST(:units AS integer), CAST(:description AS text),
       now() + make_interval(secs => CAST(:ttl AS integer)), CAST(:key AS text),
       CAST(:hash AS bytea)
FROM u
RETURNING {HOLD_COLUMNS}
""")

# Capture: the hold row is claimed first (a second capture waits for it and then finds it
# no longer 'held'), then the balance changes and the CONSUMPTION row is written at the
# hold's price. The reservation covered the amount, so the balance cannot go short.
CAPTURE = text(f"""
WITH h AS (
    UPDATE holds SET status = 'captured', resolved_at = clock_timestamp(),
                     transaction_id = CAST(:tx_id AS uuid)
    WHERE id = CAST(:id AS uuid) AND status = 'held' AND expires_at > now()
      AND units >= CAST(:units AS integer)
      AND NOT EXISTS (SELECT 1 FROM transactions k
                      WHERE k.user_id = holds.user_id AND k.idempotency_key = CAST(:key AS text))
    RETURNING user_id, skill_id, skill, unit_cost, description
), u AS (
    UPDATE users SET credits = users.credits - h.unit_cost * CAST(:units AS integer)
    FROM h WHERE users.user_id = h.user_id
    RETURNING users.user_id, users.credits, h.skill_id, h.skill, h.unit_cost, h.description
)
INSERT INTO transactions (id, user_id, type, amount, balance_after, skill_id, skill, units,
                          unit_cost, description, idempotency_key, request_hash)
SELECT CAST(:tx_id AS uuid), u.user_id, 'CONSUMPTION', -(u.unit_cost * CAST(:units AS integer)),
       u.credits, u.skill_id, u.skill, CAST(:units AS integer), u.unit_cost,
       coalesce(CAST(:description AS text), u.description), CAST(:key AS text),
       CAST(:hash AS bytea)
FROM u
RETURNING {TX_COLUMNS}
""")

RELEASE = text(f"""
UPDATE holds SET status = 'released', resolved_at = clock_timestamp()
WHERE id = CAST(:id AS uuid) AND status = 'held' AND expires_at > now()
RETURNING {HOLD_COLUMNS}
""")


def hold_from_row(row: Any) -> Hold:
    return Hold(
        id=row.id,
        user_id=row.user_id,
        skill=row.skill,
        skill_version=row.skill_version,
        units=row.units,
        unit_cost=row.unit_cost,
        amount=row.amount,
        status=row.status,
        expires_at=row.expires_at,
        created_at=row.created_at,
    )


async def hold(conn: Connection, params: dict[str, Any]) -> Row | None:
    return (await conn.execute(HOLD, params)).first()


async def capture(conn: Connection, params: dict[str, Any]) -> Row | None:
    return (await conn.execute(CAPTURE, params)).first()


async def release(conn: Connection, hold_id: str) -> Row | None:
    return (await conn.execute(RELEASE, {"id": hold_id})).first()


async def get_hold(conn: Connection, hold_id: str) -> Row | None:
    return (
        await conn.execute(
            text(f"SELECT {HOLD_COLUMNS} FROM holds WHERE id = CAST(:id AS uuid)"),
            {"id": hold_id},
        )
    ).first()


async def hold_by_idempotency_key(conn: Connection, user_id: str, key: str) -> Row | None:
    return (
        await conn.execute(
            text(
                f"SELECT {HOLD_COLUMNS}, request_hash FROM holds"
                " WHERE user_id = :user_id AND idempotency_key = :key"
            ),
            {"user_id": user_id, "key": key},
        )
    ).first()


def _refusal(key_table: str) -> Any:
    """Everything a refused priced write needs to be explained, in one round trip: the
    caller's key, the idempotency key, the skill (``s_`` columns) and the user."""
    return text(f"""
SELECT
    (SELECT a.revoked_at IS NULL FROM api_keys a
     WHERE a.id = CAST(:api_key_id AS text)) AS key_live,
    EXISTS (SELECT 1 FROM {key_table} k
            WHERE k.user_id = :user_id AND k.idempotency_key = CAST(:key AS text)) AS key_used,
    {skill_columns("s", "s_")},
    u.credits AS u_credits, CASE WHEN u.user_id IS NULL THEN NULL ELSE {RESERVED} END
        AS u_reserved
FROM (SELECT 1) AS one
LEFT JOIN skills s ON s.name = :skill
LEFT JOIN users u ON u.user_id = :user_id
""")


REFUSAL_OF_CHARGE = _refusal("transactions")
REFUSAL_OF_HOLD = _refusal("holds")


async def refusal_of_charge(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(REFUSAL_OF_CHARGE, params)).first()


async def refusal_of_hold(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(REFUSAL_OF_HOLD, {"api_key_id": None, **params})).first()


__all__ = ["decode_cursor", "encode_cursor"]  # the cursor of history pages, for callers
