"""Every query of auto-recharge: calls of ``ledger/sql/recharges.sql``, each under the
user's lock, in autocommit, and the user's requests by page. A rule or a request comes
back as the JSON the database makes (``sc_recharge_rule_json``, ``sc_recharge_json``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import text

from skill_credits.db import Connection
from skill_credits.ledger.repository import TX_OUTCOME, outcome_query
from skill_credits.pagination import time_page
from skill_credits.recharges.schemas import AutoRecharge, AutoRechargeIn, Recharge

_RULE = msgspec.json.Decoder(AutoRecharge)
_RECHARGE = msgspec.json.Decoder(Recharge)

SET = text(
    "SELECT o::text FROM sc_recharge_set(CAST(:user_id AS text), CAST(:threshold AS bigint),"
    " CAST(:amount AS bigint), CAST(:max_per_month AS bigint), CAST(:category AS text),"
    " CAST(:priority AS integer), CAST(:expires_in_days AS integer)) o"
)
RULE = text("SELECT outcome, rule::text AS rule FROM sc_recharge_rule(CAST(:user_id AS text))")
DELETE = text("SELECT o FROM sc_recharge_delete(CAST(:user_id AS text)) o")
GET = text("SELECT o::text FROM sc_recharge_get(CAST(:user_id AS text), CAST(:id AS uuid)) o")
FULFIL = outcome_query(
    "sc_recharge_fulfil",
    "CAST(:user_id AS text), CAST(:id AS uuid), CAST(:reference AS text)",
    TX_OUTCOME,
)
FAIL = text(
    "SELECT outcome, req::text AS req FROM sc_recharge_fail(CAST(:user_id AS text),"
    " CAST(:id AS uuid), CAST(:reason AS text))"
)
# A request's columns as sc_recharge_json names them, for pages of them.
COLUMNS = (
    "id::text AS id, user_id, amount, status, reference, reason,"
    " transaction_id::text AS transaction_id, created_at, resolved_at"
)


def rule_from_json(value: str | bytes) -> AutoRecharge:
    return _RULE.decode(value)


def recharge_from_json(value: str | bytes) -> Recharge:
    return _RECHARGE.decode(value)


async def set_rule(conn: Connection, user_id: str, data: AutoRechargeIn) -> AutoRecharge | None:
    """The rule as set (and a request made at once if the balance is low already); None
    for an unknown user."""
    params = {"user_id": user_id, **msgspec.structs.asdict(data)}
    value = (await conn.execute(SET, params)).scalar()
    return rule_from_json(value) if value is not None else None


async def rule(conn: Connection, user_id: str) -> tuple[str, AutoRecharge | None]:
    """``user_not_found``, ``auto_recharge_not_found`` or ``found`` and the rule."""
    row = (await conn.execute(RULE, {"user_id": user_id})).one()
    return row.outcome, rule_from_json(row.rule) if row.rule is not None else None


async def delete_rule(conn: Connection, user_id: str) -> str:
    """``deleted``, ``user_not_found`` or ``auto_recharge_not_found``."""
    return str((await conn.execute(DELETE, {"user_id": user_id})).scalar_one())


async def get(conn: Connection, user_id: str, recharge_id: str) -> Recharge | None:
    value = (await conn.execute(GET, {"user_id": user_id, "id": recharge_id})).scalar()
    return recharge_from_json(value) if value is not None else None


async def fulfil(conn: Connection, user_id: str, recharge_id: str, reference: str | None) -> Any:
    """The outcome row: written or replay (the purchase), not_found, recharge_not_pending."""
    params = {"user_id": user_id, "id": recharge_id, "reference": reference}
    return (await conn.execute(FULFIL, params)).one()


async def fail(conn: Connection, user_id: str, recharge_id: str, reason: str) -> Any:
    """The outcome row: written, repeat, recharge_not_pending or not_found, and ``req``."""
    params = {"user_id": user_id, "id": recharge_id, "reason": reason}
    return (await conn.execute(FAIL, params)).one()


async def page(
    conn: Connection,
    user_id: str,
    status: str | None,
    before: tuple[datetime, int] | None,
    limit: int,
) -> tuple[list[Recharge], str | None]:
    """The user's requests, newest first."""
    rows, next_cursor = await time_page(
        conn, "recharges", COLUMNS, {"user_id": user_id, "status": status}, before, limit
    )
    items = [
        Recharge(
            id=r.id,
            user_id=r.user_id,
            amount=r.amount,
            status=r.status,
            reference=r.reference,
            reason=r.reason,
            transaction_id=r.transaction_id,
            created_at=r.created_at,
            resolved_at=r.resolved_at,
        )
        for r in rows
    ]
    return items, next_cursor
