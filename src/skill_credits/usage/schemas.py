"""Usage and forecast answers (the contract's "Usage: what was spent, on what, by whom")."""

from __future__ import annotations

from datetime import datetime

from msgspec import Struct, field

INTERVALS = ("hour", "day", "month")
GROUPS = ("skill", "user", "member", "category", "none")
CATEGORIES = ("paid", "promotional")
MAX_BUCKETS = 744
CSV_COLUMNS = ("start", "group", "charges", "units", "consumed", "refunded")


class UsageItem(Struct, kw_only=True):
    start: datetime
    group: str | None
    charges: int | None  # None when grouped by category
    units: int | None
    consumed: int
    refunded: int


class UsageTotal(Struct, kw_only=True):
    group: str | None
    charges: int | None
    units: int | None
    consumed: int
    refunded: int


class Usage(Struct, kw_only=True):
    from_: datetime = field(name="from")
    to: datetime
    interval: str
    group_by: str
    items: list[UsageItem]
    totals: list[UsageTotal]


class Expiring(Struct, kw_only=True):
    grant_id: str
    remaining: int
    expires_at: datetime


class Forecast(Struct, kw_only=True):
    user_id: str
    available: int
    burn_per_day: float
    runway_days: float | None
    depletes_at: datetime | None
    expiring: list[Expiring]
