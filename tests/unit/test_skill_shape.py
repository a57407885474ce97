"""The skill's shape is written once: the Structs agree, and SQL follows ``Skill``."""

from __future__ import annotations

import types

import msgspec

from skill_credits.skills.repository import SKILL_COLUMNS, skill_columns, skill_from_row
from skill_credits.skills.schemas import (
    EDITABLE,
    CatalogueItem,
    Skill,
    SkillCreate,
    SkillPatch,
    catalogue_item,
)


def test_the_skill_structs_agree() -> None:
    assert set(SkillCreate.__struct_fields__) <= set(Skill.__struct_fields__)
    assert set(CatalogueItem.__struct_fields__) <= set(Skill.__struct_fields__)
    assert EDITABLE == SkillPatch.__struct_fields__
    assert set(EDITABLE) == set(SkillCreate.__struct_fields__) - {"name"}


def test_every_skill_field_is_a_column_and_comes_back_with_its_prefix() -> None:
    skill = msgspec.json.decode(
        b'{"id": "00000000-0000-4000-8000-000000000000", "name": "S", "display_name": "S",'
        b' "description": null, "cost": 3, "is_active": true, "version": 2,'
        b' "created_at": "2026-01-01T00:00:00Z", "updated_at": "2026-01-01T00:00:00Z"}',
        type=Skill,
    )
    for field in Skill.__struct_fields__:
        assert f" AS s_{field}" in skill_columns("s", "s_")
        assert f" AS {field}" in SKILL_COLUMNS
    assert skill_columns("s", "s_").startswith("s.id::text AS s_id, s.name AS s_name")
    row = types.SimpleNamespace(**{f"s_{f}": getattr(skill, f) for f in Skill.__struct_fields__})
    assert skill_from_row(row, "s_") == skill
    assert catalogue_item(skill) == CatalogueItem("S", "S", None, 3)
