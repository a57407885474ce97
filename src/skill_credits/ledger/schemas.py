from __future__ import annotations

from datetime import datetime
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
TransactionType = Literal["CONSUMPTION", "PURCHASE", "GRANT", "REFUND", "ADJUSTMENT"]
TRANSACTION_TYPES = ("CONSUMPTION", "PURCHASE", "GRANT", "REFUND", "ADJUSTMENT")


class ChargeIn(Struct, forbid_unknown_fields=True):
    user_id: UserId
    skill: SkillRef
    description: TxDescription | None = None
    units: Units = 1

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_skill_name(self.skill, "skill")
        check_text(self.description, "description")


class CreditIn(Struct, forbid_unknown_fields=True):
    amount: Amount
    type: Literal["PURCHASE", "GRANT", "ADJUSTMENT"]
    description: TxDescription | None = None

    def __post_init__(self) -> None:
        if self.type in ("PURCHASE", "GRANT") and self.amount <= 0:
            raise ValueError(f"amount: must be > 0 for {self.type}")
        if self.amount == 0:
            raise ValueError("amount: must not be 0")
        check_text(self.description, "description")


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

    def __post_init__(self) -> None:
        check_user_id(self.user_id)
        check_skill_name(self.skill, "skill")
        check_text(self.description, "description")


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
    created_at: datetime


class TransactionPage(Struct):
    items: list[Transaction]
    next_cursor: str | None


class User(Struct, kw_only=True):
    user_id: str
    credits: int
    reserved: int
    available: int
    created_at: datetime
