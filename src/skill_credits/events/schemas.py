from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from msgspec import Meta, Struct

from skill_credits.validation import MAX_INT64, UUID_FORMAT, schema_only

EventType = Literal[
    "balance.low",
    "balance.depleted",
    "balance.recovered",
    "balance.recharge_requested",
    "balance.recharge_fulfilled",
    "balance.recharge_suspended",
    "skill.changed",
]
EVENT_TYPES = (
    "balance.low",
    "balance.depleted",
    "balance.recovered",
    "balance.recharge_requested",
    "balance.recharge_fulfilled",
    "balance.recharge_suspended",
    "skill.changed",
)
# What an admin route shows: a service key's /v1/events leaves these out.
ADMIN_EVENT_TYPES = ("skill.changed",)


class Event(Struct, kw_only=True):
    id: Annotated[str, UUID_FORMAT]
    type: EventType
    user_id: str | None
    data: dict[str, Any]
    created_at: datetime


class EventPage(Struct):
    items: list[Event]
    next_cursor: str | None


class ThresholdIn(Struct, forbid_unknown_fields=True):
    """``null`` switches the low-balance events of this user off."""

    low_balance_threshold: (
        Annotated[int, Meta(ge=0, le=MAX_INT64), schema_only(minimum=0, maximum=MAX_INT64)] | None
    )


class Threshold(Struct):
    user_id: str
    low_balance_threshold: int | None
