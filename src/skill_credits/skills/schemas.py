from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from skill_credits.validation import (
    SKILL_NAME_RE,
    UUID_FORMAT,
    anchored,
    check_skill_name,
    check_text,
    schema_only,
)

DISPLAY_NAME_MAX_LENGTH = 120
DESCRIPTION_MAX_LENGTH = 2000
COST_MAX = 1_000_000_000

DisplayName = Annotated[str, Meta(min_length=1, max_length=DISPLAY_NAME_MAX_LENGTH)]
Description = Annotated[str, Meta(max_length=DESCRIPTION_MAX_LENGTH)]
# Litestar drops a 0 minimum on an optional field (SkillPatch.cost): state both bounds.
Cost = Annotated[int, Meta(ge=0, le=COST_MAX), schema_only(minimum=0, maximum=COST_MAX)]
SkillName = Annotated[
    str,
    Meta(min_length=1, max_length=64, examples=["GEO_WRITER_FULL"]),
    schema_only(pattern=anchored(SKILL_NAME_RE)),
]


class SkillCreate(Struct, forbid_unknown_fields=True):
    name: SkillName
    display_name: DisplayName
    cost: Cost
    description: Description | None = None
    is_active: bool = True

    def __post_init__(self) -> None:
        check_skill_name(self.name)
        check_text(self.display_name, "display_name")
        check_text(self.description, "description")


class SkillPatch(Struct, forbid_unknown_fields=True):
    """The editable fields (every field of ``SkillCreate`` but ``name``), each optional."""

    display_name: DisplayName | UnsetType = UNSET
    description: Description | None | UnsetType = UNSET
    cost: Cost | UnsetType = UNSET
    is_active: bool | UnsetType = UNSET

    def __post_init__(self) -> None:
        if all(getattr(self, f) is UNSET for f in self.__struct_fields__):
            raise ValueError(f"body: name at least one of {', '.join(EDITABLE)}")
        if self.display_name is not UNSET:
            check_text(self.display_name, "display_name")
        if self.description is not UNSET:
            check_text(self.description, "description")

    def given(self) -> dict[str, Any]:
        return {
            f: getattr(self, f) for f in self.__struct_fields__ if getattr(self, f) is not UNSET
        }


class Skill(Struct, kw_only=True, frozen=True):
    """A skill as the admin API shows it, and as the Redis cache holds it. Frozen: a
    worker hands the one it remembers (cache.py) to every charge that asks."""

    id: Annotated[str, UUID_FORMAT]
    name: str
    display_name: str
    description: str | None
    cost: int
    is_active: bool
    version: int
    created_at: datetime
    updated_at: datetime


class SkillList(Struct):
    items: list[Skill]


class CatalogueItem(Struct):
    name: str
    display_name: str
    description: str | None
    cost: int


class Catalogue(Struct):
    items: list[CatalogueItem]


class SkillEdit(Struct):
    version: int
    changed_at: datetime
    actor: str
    changes: dict[str, list[Any]]


class SkillHistory(Struct):
    items: list[SkillEdit]


# What an edit may change, in the order the history records it.
EDITABLE: tuple[str, ...] = SkillPatch.__struct_fields__


def catalogue_item(skill: Skill) -> CatalogueItem:
    return CatalogueItem(*(getattr(skill, f) for f in CatalogueItem.__struct_fields__))


_encoder = msgspec.json.Encoder()
_skill_decoder = msgspec.json.Decoder(Skill)
_skills_decoder = msgspec.json.Decoder(list[Skill])


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


def decode_skill(raw: bytes) -> Skill:
    return _skill_decoder.decode(raw)


def decode_skills(raw: bytes) -> list[Skill]:
    return _skills_decoder.decode(raw)
