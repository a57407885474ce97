"""Usage: consumption by bucket and group, a user's runway, and the step that rolls the log
up (docs/usage.md). Reads are exact: the rollups up to their mark plus the log after it,
read in one statement."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import DBAPIError

from skill_credits import errors
from skill_credits.db import Database
from skill_credits.db.failures import sqlstate
from skill_credits.ledger import repository as ledger_repo
from skill_credits.usage import repository as repo
from skill_credits.usage.schemas import (
    MAX_BUCKETS,
    Expiring,
    Forecast,
    Usage,
    UsageItem,
    UsageTotal,
)

log = logging.getLogger(__name__)

BURN_WINDOW = timedelta(days=7)
EXPIRING_WITHIN = timedelta(days=30)
DEFAULT_RANGE = timedelta(days=30)
ROLL_STEP = timedelta(days=1)  # the most of the log one rollup step (one transaction) takes


@dataclass(frozen=True, slots=True)
class Query:
    start: datetime | None
    end: datetime | None
    interval: str = "day"
    group_by: str = "skill"
    user_id: str | None = None
    member: str | None = None
    skill: str | None = None


def bucket_start(instant: datetime, interval: str) -> datetime:
    """The first instant of the calendar bucket (UTC) that holds ``instant``."""
    t = instant.astimezone(UTC)
    if interval == "hour":
        return t.replace(minute=0, second=0, microsecond=0)
    if interval == "day":
        return t.replace(hour=0, minute=0, second=0, microsecond=0)
    return t.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def buckets(start: datetime, end: datetime, interval: str) -> int:
    """How many calendar buckets ``[start, end)`` touches."""
    first = bucket_start(start, interval)
    last = bucket_start(end - timedelta(microseconds=1), interval)
    if interval == "hour":
        return int((last - first) / timedelta(hours=1)) + 1
    if interval == "day":
        return (last - first).days + 1
    return (last.year - first.year) * 12 + last.month - first.month + 1


def _span(query: Query, now: datetime) -> tuple[datetime, datetime]:
    end = query.end or now
    try:
        start = query.start or end - DEFAULT_RANGE
        count = buckets(start, end, query.interval)
    except OverflowError:  # a range at the very start of the calendar
        raise errors.validation_error("from", "must be after 0001-01-01") from None
    if start >= end:
        raise errors.validation_error("from", "must be before to")
    if count > MAX_BUCKETS:
        raise errors.validation_error(
            "from", f"the range may touch at most {MAX_BUCKETS} {query.interval} buckets"
        )
    return start, end


def _items(rows: list, group_by: str) -> list[UsageItem]:
    if group_by != "category":
        return [
            UsageItem(
                start=r.start,
                group=r.grp,
                charges=r.charges,
                units=r.units,
                consumed=r.consumed,
                refunded=r.refunded,
            )
            for r in rows
        ]
    items: list[UsageItem] = []
    for r in rows:
        paid = (r.paid_consumed, r.paid_refunded)
        promotional = (r.consumed - r.paid_consumed, r.refunded - r.paid_refunded)
        for name, (consumed, refunded) in (("paid", paid), ("promotional", promotional)):
            if consumed or refunded:
                items.append(
                    UsageItem(
                        start=r.start,
                        group=name,
                        charges=None,
                        units=None,
                        consumed=consumed,
                        refunded=refunded,
                    )
                )
    return items


def _totals(items: list[UsageItem]) -> list[UsageTotal]:
    totals: dict[str | None, UsageTotal] = {}
    for item in items:
        total = totals.get(item.group)
        if total is None:
            totals[item.group] = UsageTotal(
                group=item.group,
                charges=item.charges,
                units=item.units,
                consumed=item.consumed,
                refunded=item.refunded,
            )
            continue
        if total.charges is not None and item.charges is not None:
            total.charges += item.charges
        if total.units is not None and item.units is not None:
            total.units += item.units
        total.consumed += item.consumed
        total.refunded += item.refunded
    return sorted(totals.values(), key=lambda t: (t.group is not None, t.group or ""))


async def _checked_span(conn: Any, query: Query) -> tuple[datetime, datetime]:
    """The range of ``query`` (400 if it is not one), after 404 for an unknown filter."""
    if query.user_id is not None and not await repo.user_exists(conn, query.user_id):
        raise errors.user_not_found(query.user_id)
    if query.skill is not None and not await repo.skill_exists(conn, query.skill):
        raise errors.skill_not_found(query.skill)
    return _span(query, await repo.now(conn))


async def usage(db: Database, query: Query) -> Usage:
    """Consumption in ``query``'s range; 404 for an unknown user or skill filter."""
    group = None if query.group_by in ("category", "none") else query.group_by
    async with db.connect() as conn:
        start, end = await _checked_span(conn, query)
        rows = await repo.usage(
            conn, start, end, query.interval, group, query.user_id, query.member, query.skill
        )
    items = _items(rows, query.group_by)
    return Usage(
        from_=start,
        to=end,
        interval=query.interval,
        group_by=query.group_by,
        items=items,
        totals=_totals(items),
    )


def runway_of(
    available: int, burn_per_day: float, now: datetime
) -> tuple[float | None, datetime | None]:
    """Days until ``available`` is spent at ``burn_per_day``, and the instant it is: both
    None without a burn; the instant None past the last one a date can hold (year 9999)."""
    if burn_per_day <= 0:
        return None, None
    days = available / burn_per_day
    try:
        return days, now + timedelta(days=days)
    except OverflowError:
        return days, None


async def top_users(db: Database, query: Query, n: int) -> list[UsageTotal]:
    """The ``n`` users who consumed most in ``query``'s range, most first."""
    async with db.connect() as conn:
        start, end = await _checked_span(conn, query)
        rows = await repo.top_users(conn, start, end, query.user_id, query.member, query.skill, n)
    return [
        UsageTotal(
            group=r.grp, charges=r.charges, units=r.units, consumed=r.consumed, refunded=r.refunded
        )
        for r in rows
    ]


async def forecast(db: Database, user_id: str) -> Forecast:
    """The user's burn over the last seven days and what it leaves; 404 if no such user."""
    async with db.connect() as conn:
        user = await ledger_repo.get_user(conn, user_id)  # writes off what expired first
        if user is None:
            raise errors.user_not_found(user_id)
        now = await repo.now(conn)
        rows = await repo.usage(conn, now - BURN_WINDOW, now, "month", None, user_id, None, None)
        expiring = await repo.expiring(conn, user_id, now, now + EXPIRING_WITHIN)
    burned = sum(r.consumed - r.refunded for r in rows)
    burn_per_day = burned / BURN_WINDOW.days
    runway, depletes_at = runway_of(user.available, burn_per_day, now)
    return Forecast(
        user_id=user_id,
        available=user.available,
        burn_per_day=burn_per_day,
        runway_days=runway,
        depletes_at=depletes_at,
        expiring=[
            Expiring(grant_id=r.grant_id, remaining=r.remaining, expires_at=r.expires_at)
            for r in expiring
        ],
    )


_said_off: set[str] = set()  # why rollups are off, each said once per process


async def roll(db: Database, steps: int | None = None) -> datetime | None:
    """Roll the log up towards the horizon, one step (one transaction, a day of the log)
    at a time, at most ``steps`` of them; the new mark, or None where nothing is rolled up
    (Citus, or a database that does not show every session's start)."""
    async with db.connect() as conn:
        try:
            horizon = await repo.horizon(conn)
        except DBAPIError as exc:
            if sqlstate(exc) != "42501":  # insufficient_privilege
                raise
            if str(exc.orig) not in _said_off:
                _said_off.add(str(exc.orig))
                log.warning("usage rollups are off: %s", exc.orig)
            return None
        done = 0
        while True:
            mark = await repo.roll(conn, horizon, ROLL_STEP)
            done += 1
            if mark is None or mark >= horizon or (steps is not None and done >= steps):
                return mark


async def rebuild(db: Database) -> datetime | None:
    """Forget the rollups and build them again from the log (docs/usage.md, "reconcile")."""
    async with db.connect() as conn:
        await repo.rebuild(conn)
    return await roll(db)
