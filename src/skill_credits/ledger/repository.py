"""Every query of the ledger.

The writes are calls of the ledger's database functions (``ledger/sql/ledger_v*.sql``,
loaded by migrations 0006-0008): one per write, the user id first, each its own transaction
in autocommit and one round trip. A function locks the user, writes off what expired,
does its work and answers with its outcome row; ``outcome`` is ``written``, ``replay`` or
the refusal, and the row carries the transaction (or hold), the skill (``s_`` columns,
see skills.repository.skill_columns) and the facts of a 402.

Reads that show a balance, the log or grants call ``sc_touch`` (or ``sc_user``) first,
so an expired grant is written off before anything counts it.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from sqlalchemy import text

from skill_credits.db import Connection
from skill_credits.db.shards import ShardMap
from skill_credits.ledger.schemas import (
    CreditsByCategory,
    Grant,
    Hold,
    Source,
    Transaction,
    User,
)
from skill_credits.pagination import decode_cursor, encode_cursor, encode_id_cursor, keyset_page
from skill_credits.skills.repository import skill_columns
from skill_credits.usage import repository as usage_repo

Row = Any  # a row of Connection.execute: attribute access by column name

TX_COLUMNS = (
    "id::text AS id, user_id, type, amount, balance_after, skill, units, unit_cost,"
    " description, refund_of::text AS refund_of, member, grant_id::text AS grant_id,"
    " sources::text AS sources, created_at"
)
# An outcome row of a function answering with a transaction.
TX_OUTCOME = (
    "o.outcome, o.id, o.user_id, o.type, o.amount, o.balance_after, o.skill, o.units,"
    " o.unit_cost, o.description, o.refund_of, o.grant_id, o.sources::text AS sources,"
    " o.created_at, o.request_hash, o.credits, o.available, o.required, o.hold_status,"
    " o.member, o.lim::text AS lim, o.limited"
)
HOLD_OUTCOME = (
    "o.outcome, o.id, o.user_id, o.skill, o.skill_version, o.units, o.unit_cost, o.amount,"
    " o.status, o.member, o.expires_at, o.created_at, o.request_hash, o.credits, o.available,"
    " o.required, o.lim::text AS lim"
)
SKILL = skill_columns("(o.sk)", "s_")


def outcome_query(function: str, args: str, columns: str) -> Any:
    """The query of a ledger function answering with an outcome row (``columns``)."""
    return text(f"SELECT {columns}, {SKILL} FROM {function}({args}) o")


CREDIT = outcome_query(
    "sc_credit",
    "CAST(:user_id AS text), CAST(:type AS text), CAST(:amount AS bigint),"
    " CAST(:description AS text), CAST(:key AS text), CAST(:hash AS bytea),"
    " CAST(:expires_at AS timestamptz), CAST(:priority AS integer), CAST(:category AS text)",
    TX_OUTCOME,
)
REFUND = outcome_query(
    "sc_refund",
    "CAST(:user_id AS text), CAST(:id AS uuid), CAST(:description AS text),"
    " CAST(:key AS text), CAST(:hash AS bytea)",
    TX_OUTCOME,
)


def _args(arguments: tuple[tuple[str, str], ...], suffix: str = "", array: str = "") -> str:
    return ", ".join(f"CAST(:{name}{suffix} AS {kind}{array})" for name, kind in arguments)


def _batched(function: str, arguments: tuple[tuple[str, str], ...], columns: str) -> Any:
    """``function``'s batch form (``ledger/sql/batches.sql``): each argument an array, one
    element a write; the outcome rows in the writes' order."""
    return text(
        f"SELECT {columns}, {SKILL} FROM {function}_batch(CAST(:route AS text),"
        f" {_args(arguments, '_list', '[]')}) WITH ORDINALITY o ORDER BY o.ordinality"
    )


# The arguments of the writes that run in batches, in order.
CHARGE_ARGS = (
    ("user_id", "text"),
    ("skill", "text"),
    ("version", "integer"),
    ("units", "integer"),
    ("description", "text"),
    ("key", "text"),
    ("hash", "bytea"),
    ("api_key_id", "text"),
    ("member", "text"),
    ("limited", "boolean"),
)
HOLD_ARGS = (
    ("user_id", "text"),
    ("skill", "text"),
    ("version", "integer"),
    ("units", "integer"),
    ("ttl", "integer"),
    ("description", "text"),
    ("key", "text"),
    ("hash", "bytea"),
    ("member", "text"),
)
CAPTURE_ARGS = (
    ("user_id", "text"),
    ("id", "uuid"),
    ("units", "integer"),
    ("description", "text"),
    ("key", "text"),
    ("hash", "bytea"),
)
CHARGE = outcome_query("sc_charge", _args(CHARGE_ARGS), TX_OUTCOME)
HOLD = outcome_query("sc_hold", _args(HOLD_ARGS), HOLD_OUTCOME)
CAPTURE = outcome_query("sc_capture", _args(CAPTURE_ARGS), TX_OUTCOME)
CHARGE_BATCH = _batched("sc_charge", CHARGE_ARGS, TX_OUTCOME)
HOLD_BATCH = _batched("sc_hold", HOLD_ARGS, HOLD_OUTCOME)
CAPTURE_BATCH = _batched("sc_capture", CAPTURE_ARGS, TX_OUTCOME)
RELEASE = outcome_query("sc_release", "CAST(:user_id AS text), CAST(:id AS uuid)", HOLD_OUTCOME)

_SOURCES = msgspec.json.Decoder(list[Source])


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
        member=row.member,
        grant_id=row.grant_id,
        sources=_SOURCES.decode(row.sources),
        created_at=row.created_at,
    )


async def charge(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(CHARGE, params)).one()


async def _in_batch(
    conn: Connection, alone: Any, statement: Any, arguments: tuple, items: list[dict[str, Any]]
) -> list[Row]:
    """The outcome rows of ``items`` in their order: one item is the function's own call
    (``alone``), several go in its batch form (``statement``), routed by the first one's
    user (on Citus the call runs on that user's node: the caller sends users of one node)."""
    if len(items) == 1:
        return [(await conn.execute(alone, items[0])).one()]
    lists = {f"{name}_list": [item[name] for item in items] for name, _ in arguments}
    lists["route"] = items[0]["user_id"]
    return list((await conn.execute(statement, lists)).all())


async def charge_batch(conn: Connection, items: list[dict[str, Any]]) -> list[Row]:
    """Charges (each as ``charge`` takes it) in one call and one commit; their outcomes in
    their order. One alone is ``sc_charge`` itself."""
    return await _in_batch(conn, CHARGE, CHARGE_BATCH, CHARGE_ARGS, items)


async def hold_batch(conn: Connection, items: list[dict[str, Any]]) -> list[Row]:
    """Holds (each as ``hold`` takes it) in one call and one commit; one is ``sc_hold``."""
    return await _in_batch(conn, HOLD, HOLD_BATCH, HOLD_ARGS, items)


async def capture_batch(conn: Connection, items: list[dict[str, Any]]) -> list[Row]:
    """Captures (each as ``capture`` takes it) in one call and one commit; one is
    ``sc_capture``."""
    return await _in_batch(conn, CAPTURE, CAPTURE_BATCH, CAPTURE_ARGS, items)


async def credit(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(CREDIT, params)).one()


async def refund(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(REFUND, params)).one()


async def hold(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(HOLD, params)).one()


async def capture(conn: Connection, params: dict[str, Any]) -> Row:
    return (await conn.execute(CAPTURE, params)).one()


async def release(conn: Connection, user_id: str, hold_id: str) -> Row:
    return (await conn.execute(RELEASE, {"user_id": user_id, "id": hold_id})).one()


async def touch(conn: Connection, user_id: str) -> bool:
    """Write off what expired for the user; False if there is no such user."""
    return bool(
        (await conn.execute(text("SELECT sc_touch(CAST(:u AS text))"), {"u": user_id})).scalar()
    )


async def due_users(conn: Connection, limit: int) -> list[str]:
    """Users with a grant or hold past its expiry that nothing has written off yet."""
    rows = await conn.execute(text("SELECT sc_due_users(:n) AS user_id"), {"n": limit})
    return [r.user_id for r in rows]


KEYED = text(
    f"SELECT {TX_COLUMNS}, request_hash FROM transactions"
    " WHERE user_id = :user_id AND idempotency_key = :key"
)


async def keyed(conn: Connection, user_id: str, key: str) -> Row | None:
    """The transaction written under ``key`` for ``user_id``, with its request hash."""
    return (await conn.execute(KEYED, {"user_id": user_id, "key": key})).first()


async def has_grant(conn: Connection, user_id: str, grant_id: str) -> bool:
    row = await conn.execute(
        text("SELECT 1 AS one FROM grants WHERE id = CAST(:id AS uuid) AND user_id = :user_id"),
        {"id": grant_id, "user_id": user_id},
    )
    return row.first() is not None


async def get_user(conn: Connection, user_id: str) -> User | None:
    """The balance, after writing off what expired."""
    row = (
        await conn.execute(text("SELECT * FROM sc_user(CAST(:u AS text))"), {"u": user_id})
    ).first()
    if row is None:
        return None
    return User(
        user_id=row.user_id,
        credits=row.credits,
        reserved=row.reserved,
        available=row.available,
        credits_by_category=CreditsByCategory(paid=row.paid, promotional=row.promotional),
        created_at=row.created_at,
    )


GRANT_COLUMNS = (
    "id::text AS id, user_id, transaction_id::text AS transaction_id, category, priority,"
    " amount, remaining, reserved, expires_at, status, created_at"
)
# Spending order as a row value: priority, expiry (never last), oldest first.
SPENDING = "priority, coalesce(expires_at, 'infinity'::timestamptz), created_at, id"


async def grants_page(
    conn: Connection, user_id: str, status: str, limit: int, after: str | None
) -> tuple[list[Grant], str | None]:
    """A page of the user's grants of ``status`` in spending order, after grant ``after``
    (as ``grants_now`` shows them: what charges took from the head counted)."""
    where = "user_id = :user_id AND status = :status"
    if after is not None:
        where += (
            f" AND ({SPENDING}) > (SELECT {SPENDING} FROM grants_now"
            " WHERE id = CAST(:after AS uuid) AND user_id = :user_id)"
        )
    rows = (
        await conn.execute(
            text(
                f"SELECT {GRANT_COLUMNS} FROM grants_now WHERE {where}"
                f" ORDER BY {SPENDING} LIMIT :limit"
            ),
            {"user_id": user_id, "status": status, "after": after, "limit": limit + 1},
        )
    ).all()
    items = [Grant(**{f: getattr(r, f) for f in Grant.__struct_fields__}) for r in rows[:limit]]
    next_cursor = encode_id_cursor(items[-1].id) if len(rows) > limit else None
    return items, next_cursor


SET_LOW_BALANCE_THRESHOLD = text(
    "UPDATE users SET low_balance_threshold = :t WHERE user_id = :user_id RETURNING user_id"
)


async def set_low_balance_threshold(conn: Connection, user_id: str, threshold: int | None) -> bool:
    """False when there is no such user (the events' low-balance threshold is a user's)."""
    params = {"t": threshold, "user_id": user_id}
    return (await conn.execute(SET_LOW_BALANCE_THRESHOLD, params)).first() is not None


# A row named by its id alone: its user first, then the row by id and user.
OWNER = {
    table: text(f"SELECT user_id FROM {table} WHERE id = CAST(:id AS uuid)")
    for table in ("transactions", "holds", "recharges")
}
ROUTED_OWNER = text(
    "SELECT sc_owner(CAST(:route AS text), CAST(:tbl AS regclass), CAST(:id AS uuid))"
)


async def owner(conn: Connection, table: str, row_id: str, shards: ShardMap) -> str | None:
    """The user of the row ``row_id`` of ``table`` (``transactions``, ``holds``,
    ``recharges``) on a Citus cluster: asked of the one node that holds the shard the id
    names (its last four bytes are the user's hash, ``sc_id``; ``sc_owner`` in
    ``ledger/sql/citus.sql``). An id made before ids carried the hash, or a map gone stale,
    is looked for on every node."""
    hashed = int.from_bytes(uuid.UUID(row_id).bytes[12:], "big", signed=True)
    params = {"route": shards.route_of(hashed), "tbl": table, "id": row_id}
    found = (await conn.execute(ROUTED_OWNER, params)).scalar()
    if found is None:
        found = (await conn.execute(OWNER[table], {"id": row_id})).scalar()
    return found


async def user_of(conn: Connection, table: str, row_id: str, shards: ShardMap | None) -> str | None:
    """The user of the row ``row_id`` of ``table`` (None: there is none): on a Citus
    cluster asked of the node the id names (``owner``)."""
    if shards is None:
        return (await conn.execute(OWNER[table], {"id": row_id})).scalar()
    return await owner(conn, table, row_id, shards)


async def _by_id(
    conn: Connection, table: str, alias: str, row_id: str, shards: ShardMap | None
) -> tuple[str, dict[str, Any]] | None:
    """The user of the row ``row_id`` as SQL of the row named ``alias`` (``:owner``, or the
    row's own ``user_id`` on one server) and the parameters; None when there is no such
    row. On Citus every table a query reads is then filtered by that user, so it runs on
    the user's node alone."""
    if shards is None:
        return f"{alias}.user_id", {"id": row_id}
    user_id = await owner(conn, table, row_id, shards)
    if user_id is None:
        return None
    return ":owner", {"id": row_id, "owner": user_id}


async def get_transaction(
    conn: Connection, tx_id: str, shards: ShardMap | None = None
) -> Row | None:
    found = await _by_id(conn, "transactions", "t", tx_id, shards)
    if found is None:
        return None
    user, params = found
    return (
        await conn.execute(
            text(
                f"SELECT {TX_COLUMNS},"
                " EXISTS (SELECT 1 FROM transactions r"
                f"         WHERE r.user_id = {user}"
                "            AND r.refund_of = t.id) AS refunded"
                f" FROM transactions t WHERE t.id = CAST(:id AS uuid) AND t.user_id = {user}"
            ),
            params,
        )
    ).first()


async def page(
    conn: Connection,
    user_id: str,
    limit: int,
    before_seq: int | None,
    tx_type: str | None,
    member: str | None = None,
) -> tuple[list[Transaction], str | None]:
    """Keyset page, newest first: an index range scan on (user_id, seq DESC), or on
    (user_id, member, seq DESC) for one member's rows."""
    equal = {"user_id": user_id, "member": member, "type": tx_type}
    rows, next_cursor = await keyset_page(
        conn, "transactions", TX_COLUMNS, equal, before_seq, limit
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
            " FROM holds h"
            " LEFT JOIN transactions t ON t.user_id = h.user_id AND t.id = h.transaction_id"
            " WHERE (h.status = 'captured') <> (t.id IS NOT NULL)"
            "    OR t.unit_cost <> h.unit_cost OR t.units > h.units"
        )
    )
    for r in rows:
        problems.append(
            f"hold {r.id} ({r.status}): its capture does not match (transaction {r.tx},"
            f" {r.units} x {r.unit_cost} against {r.reserved} reserved at {r.price})"
        )
    # each limit's count against its log, one call per limit: sc_spent_so_far reads the
    # user's rows, which on Citus only a call of its own (on the user's node) may do
    limits = await conn.execute(
        text(
            "SELECT l.id::text AS id, l.user_id, l.member, l.skill_id, l.period,"
            "       sc_spent(l.window_start, l.period, l.spent, now()) AS spent"
            " FROM limits l ORDER BY l.user_id, l.id"
        )
    )
    for r in limits.all():
        logged = (
            await conn.execute(
                text(
                    "SELECT sc_spent_so_far(CAST(:u AS text), CAST(:m AS text),"
                    " CAST(:s AS uuid), CAST(:p AS text), now())"
                ),
                {"u": r.user_id, "m": r.member, "s": r.skill_id, "p": r.period},
            )
        ).scalar()
        if r.spent != logged:
            problems.append(
                f"limit {r.id} of {r.user_id}: spent {r.spent} but the log and the holds"
                f" say {logged} in its window"
            )
    rows = await conn.execute(text("SELECT user_id, grant_id, problem FROM sc_grant_problems()"))
    for r in rows:
        where = f"grant {r.grant_id} of {r.user_id}" if r.grant_id else f"user {r.user_id}"
        problems.append(f"{where}: {r.problem}")
    rows = await conn.execute(text("SELECT user_id, problem FROM sc_recharge_problems()"))
    problems += [f"auto-recharge of {r.user_id}: {r.problem}" for r in rows]
    problems += await usage_repo.problems(conn)
    return problems


async def refunded_among(conn: Connection, user_id: str, tx_ids: list[str]) -> set[str]:
    """Which of the user's ``tx_ids`` have a refund already."""
    if not tx_ids:
        return set()
    rows = await conn.execute(
        text(
            "SELECT refund_of::text AS id FROM transactions"
            " WHERE user_id = :user_id AND refund_of = ANY(CAST(:ids AS uuid[]))"
        ),
        {"user_id": user_id, "ids": tx_ids},
    )
    return {r.id for r in rows}


async def charges_among(conn: Connection, user_id: str, tx_ids: list[str]) -> dict[str, Row]:
    """The ``CONSUMPTION`` rows among the user's ``tx_ids`` (what refunds refunded), by id,
    with the ``seq`` a cursor needs to open the page that starts at one."""
    if not tx_ids:
        return {}
    rows = await conn.execute(
        text(
            "SELECT id::text AS id, skill, units, unit_cost, seq FROM transactions"
            " WHERE user_id = :user_id AND id = ANY(CAST(:ids AS uuid[]))"
            "   AND type = 'CONSUMPTION'"
        ),
        {"user_id": user_id, "ids": tx_ids},
    )
    return {r.id: r for r in rows}


HOLD_COLUMNS = (
    "id::text AS id, user_id, skill, skill_version, units, unit_cost, amount,"
    " CASE WHEN status = 'held' AND expires_at <= now() THEN 'expired' ELSE status END AS status,"
    " member, expires_at, created_at"
)


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
        member=row.member,
        expires_at=row.expires_at,
        created_at=row.created_at,
    )


async def get_hold(conn: Connection, hold_id: str, shards: ShardMap | None = None) -> Row | None:
    found = await _by_id(conn, "holds", "h", hold_id, shards)
    if found is None:
        return None
    user, params = found
    return (
        await conn.execute(
            text(
                f"SELECT {HOLD_COLUMNS} FROM holds h"
                f" WHERE h.id = CAST(:id AS uuid) AND h.user_id = {user}"
            ),
            params,
        )
    ).first()


__all__ = ["decode_cursor", "encode_cursor"]  # the cursor of history pages, for callers
