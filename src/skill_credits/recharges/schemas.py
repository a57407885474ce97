"""Auto-recharge: a rule per user, and the top-up requests it makes."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from skill_credits.ledger.schemas import Category, Id, Priority
from skill_credits.validation import check_text

Credits = Annotated[int, Meta(ge=0, le=2**53)]
PositiveCredits = Annotated[int, Meta(ge=1, le=2**53)]
Days = Annotated[int, Meta(ge=1, le=3650)]
RuleStatus = Literal["active", "suspended"]
RechargeStatus = Literal["pending", "fulfilled", "failed", "expired", "canceled"]
RECHARGE_STATUSES: tuple[str, ...] = ("pending", "fulfilled", "failed", "expired", "canceled")


class AutoRechargeIn(Struct, forbid_unknown_fields=True):
    """A field left out takes its default (a PUT replaces the whole rule)."""

    threshold: Credits
    amount: PositiveCredits
    max_per_month: PositiveCredits | None = None
    category: Category = "paid"
    priority: Priority = 50
    expires_in_days: Days | None = None


class Recharge(Struct, kw_only=True):
    id: Id
    user_id: str
    amount: int
    status: RechargeStatus
    reference: str | None
    reason: str | None
    transaction_id: Id | None
    created_at: datetime
    resolved_at: datetime | None


class AutoRecharge(Struct, kw_only=True):
    """``requested_this_month``: the credits of this calendar month's (UTC) requests that
    are pending or fulfilled; ``pending``: the pending request, or null."""

    user_id: str
    threshold: int
    amount: int
    max_per_month: int | None
    category: Category
    priority: int
    expires_in_days: int | None
    status: RuleStatus
    requested_this_month: int
    consecutive_failures: int
    pending: Recharge | None
    updated_at: datetime


class FulfilIn(Struct, forbid_unknown_fields=True):
    """``reference``: the payment's id at the host's processor, for the record."""

    reference: Annotated[str, Meta(max_length=255)] | None = None

    def __post_init__(self) -> None:
        check_text(self.reference, "reference")


class FailIn(Struct, forbid_unknown_fields=True):
    reason: Annotated[str, Meta(min_length=1, max_length=500)]

    def __post_init__(self) -> None:
        check_text(self.reason, "reason")


class RechargePage(Struct):
    items: list[Recharge]
    next_cursor: str | None
