from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from msgspec import Meta, Struct

from skill_credits.ledger.schemas import Id, Member, SkillRef
from skill_credits.validation import check_skill_name, check_user_id

Window = Literal["minute", "hour", "day", "month"]
MAX_CREDITS = 2**53
MaxCredits = Annotated[int, Meta(ge=0, le=MAX_CREDITS)]


class LimitIn(Struct, forbid_unknown_fields=True):
    """``member`` absent: everyone spending from the balance together; ``skill`` absent:
    every skill."""

    window: Window
    max_credits: MaxCredits
    member: Member | None = None
    skill: SkillRef | None = None

    def __post_init__(self) -> None:
        if self.member is not None:
            check_user_id(self.member, "member")
        if self.skill is not None:
            check_skill_name(self.skill, "skill")


class LimitPatch(Struct, forbid_unknown_fields=True):
    max_credits: MaxCredits


class Limit(Struct, kw_only=True):
    """``spent`` and ``resets_at`` describe the current window (calendar, UTC)."""

    id: Id
    user_id: str
    member: str | None
    skill: str | None
    window: Window
    max_credits: int
    spent: int
    resets_at: datetime
    created_at: datetime


class LimitList(Struct):
    items: list[Limit]
