from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from msgspec import Meta, Struct

from skill_credits.validation import (
    MAX_INT64,
    SKILL_NAME_RE,
    USER_ID_RE,
    UUID_FORMAT,
    anchored,
    check_skill_name,
    check_text,
    check_user_id,
    schema_only,
)

UserId = Annotated[
    str,
    Meta(min_length=1, max_length=128, examples=["user_42"]),
    schema_only(pattern=anchored(USER_ID_RE)),
]
# Who spends from a user's balance (a teammate, an agent): a user id's characters.
Member = Annotated[
    str,
    Meta(min_length=1, max_length=128, examples=["agent_7"]),
    schema_only(pattern=anchored(USER_ID_RE)),
]
SkillRef = Annotated[
    str,
    Meta(min_length=1, max_length=64, examples=["GEO_WRITER_FULL"]),
    schema_only(pattern=anchored(SKILL_NAME_RE)),
]
TX_DESCRIPTION_MAX_LENGTH = 500
TxDescription = Annotated[str, Meta(max_length=TX_DESCRIPTION_MAX_LENGTH)]
Units = Annotated[int, Meta(ge=1, le=1_000_000)]
Amount = Annotated[
    int,
    Meta(ge=-MAX_INT64, le=MAX_INT64),
    schema_only(minimum=-MAX_INT64, maximum=MAX_INT64),  # exact, not rounded to a float
]
Id = Annotated[str, UUID_FORMAT]
TransactionType = Literal["CONSUMPTION", "PURCHASE", "GRANT", "REFUND", "ADJUSTMENT", "EXPIRY"]
TRANSACTION_TYPES = ("CONSUMPTION", "PURCHASE", "GRANT", "REFUND", "ADJUSTMENT", "EXPIRY")
Priority = Annotated[int, Meta(ge=0, le=100)]
Category = Literal["paid", "promotional"]
GrantStatus = Literal["active", "depleted", "expired"]
GRANT_STATUSES = ("active", "depleted", "expired")
ExpiresAt = Annotated[datetime, Meta(tz=True)]
MAX_GRANT_LIFE = timedelta(days=3653)  # ten years
ONLY_GRANTS = "must be left out: only a positive amount makes a grant"


def check_spend(body: ChargeIn | HoldIn) -> None:
    """The checks of a body that spends (a charge, a hold) beyond its field types."""
    check_user_id(body.user_id)
    check_skill_name(body.skill, "skill")
    check_text(body.description, "description")
    if body.member is not None:
        check_user_id(body.member, "member")


class ChargeIn(Struct, forbid_unknown_fields=True):
    user_id: UserId
    skill: SkillRef
    description: TxDescription | None = None
    units: Units = 1
    member: Member | None = None

    def __post_init__(self) -> None:
        check_spend(self)


class CreditIn(Struct, forbid_unknown_fields=True):
    """A credit. With ``amount > 0`` it makes a grant: ``priority`` and ``category`` are
    filled in when absent (50; promotional for GRANT, else paid), so an explicit default
    and an absent field are the same request for an Idempotency-Key."""

    amount: Amount
    type: Literal["PURCHASE", "GRANT", "ADJUSTMENT"]
    description: TxDescription | None = None
    expires_at: ExpiresAt | None = None
    priority: Priority | None = None
    category: Category | None = None

    def __post_init__(self) -> None:
        if self.type in ("PURCHASE", "GRANT") and self.amount <= 0:
            raise ValueError(f"amount: must be > 0 for {self.type}")
        if self.amount == 0:
            raise ValueError("amount: must not be 0")
        check_text(self.description, "description")
        if self.amount < 0:
            for name in ("expires_at", "priority", "category"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name}: {ONLY_GRANTS}")
            return
        if self.expires_at is not None:
            # in UTC, so one instant is one request for an Idempotency-Key whatever its offset
            self.expires_at = self.expires_at.astimezone(UTC)
            if self.expires_at > datetime.now(UTC) + MAX_GRANT_LIFE:
                raise ValueError("expires_at: must be at most 10 years ahead")
        if self.priority is None:
            self.priority = 50
        if self.category is None:
            self.category = "promotional" if self.type == "GRANT" else "paid"


def expiry_passed(data: CreditIn) -> bool:
    """True when the grant ``data`` would make has an expiry that is not in the future.

    Checked when the credit is written, not when the body is read: a retry, with its
    Idempotency-Key, of a grant whose expiry has passed since gets its original answer."""
    return data.expires_at is not None and data.expires_at <= datetime.now(UTC)


class RefundIn(Struct, forbid_unknown_fields=True):
    description: TxDescription | None = None

    def __post_init__(self) -> None:
        check_text(self.description, "description")


TtlSeconds = Annotated[int, Meta(ge=1, le=86_400)]
HoldStatus = Literal["held", "captured", "released", "expired"]


class HoldIn(Struct, forbid_unknown_fields=True):
    user_id: UserId
    skill: SkillRef
    units: Units = 1
    ttl_seconds: TtlSeconds = 900
    description: TxDescription | None = None
    member: Member | None = None

    def __post_init__(self) -> None:
        check_spend(self)


class CaptureIn(Struct, forbid_unknown_fields=True):
    """``units`` defaults to the reserved units; more than reserved is a 400."""

    units: Units | None = None
    description: TxDescription | None = None

    def __post_init__(self) -> None:
        check_text(self.description, "description")


class Hold(Struct, kw_only=True):
    id: Id
    user_id: str
    skill: str
    skill_version: int
    units: int
    unit_cost: int
    amount: int
    status: HoldStatus
    member: str | None
    expires_at: datetime
    created_at: datetime


class Transaction(Struct, kw_only=True):
    id: Id
    user_id: str
    type: TransactionType
    amount: int
    balance_after: int
    skill: str | None
    units: int | None
    unit_cost: int | None
    description: str | None
    refund_of: Id | None
    member: str | None
    grant_id: Id | None
    sources: list[Source]
    created_at: datetime


class Source(Struct):
    """What one row drew from, gave back to or wrote off in one grant."""

    grant_id: Id
    amount: int


class Grant(Struct, kw_only=True):
    id: Id
    user_id: str
    transaction_id: Id | None
    category: Category
    priority: int
    amount: int
    remaining: int
    reserved: int
    expires_at: datetime | None
    status: GrantStatus
    created_at: datetime


class GrantPage(Struct):
    items: list[Grant]
    next_cursor: str | None


class CreditsByCategory(Struct):
    paid: int
    promotional: int


class TransactionPage(Struct):
    items: list[Transaction]
    next_cursor: str | None


class User(Struct, kw_only=True):
    user_id: str
    credits: int
    reserved: int
    available: int
    credits_by_category: CreditsByCategory
    created_at: datetime
