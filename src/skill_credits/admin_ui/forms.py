"""Admin forms read into the API's own structs, with every wrong field named in plain words.

Each field is checked on its own against the struct's msgspec type, so a form with three
wrong fields shows three errors at once, each beside its field and worded for a person
("Display name is required") rather than msgspec's ("Expected `str` of length >= 1").
The struct's own ``__post_init__`` checks run last, on a form whose fields all passed.
All the wording of form errors lives here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

from skill_credits.bodies import field_and_message
from skill_credits.ledger.schemas import TX_DESCRIPTION_MAX_LENGTH, CreditIn, expiry_passed
from skill_credits.limits.schemas import MAX_CREDITS, LimitIn, LimitPatch
from skill_credits.recharges.schemas import AutoRechargeIn
from skill_credits.skills.schemas import (
    COST_MAX,
    DESCRIPTION_MAX_LENGTH,
    DISPLAY_NAME_MAX_LENGTH,
    SkillCreate,
    SkillPatch,
)
from skill_credits.validation import SKILL_NAME_RE, SKILL_NAME_RULE, USER_ID_RE, USER_ID_RULE

T = TypeVar("T", bound=msgspec.Struct)
WHOLE_NUMBER = re.compile(r"-?\d{1,19}")
# what a browser's datetime-local input sends: minutes, optionally seconds
LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2})?")


@dataclass(frozen=True)
class Field:
    """How one form field is named and what it must be, in words."""

    label: str
    rule: str  # completes "<label> must be ..."
    required: bool = False
    number: bool = False
    pattern: re.Pattern[str] | None = None
    utc: bool = False  # a datetime-local value, read as UTC


def _thousands(n: int) -> str:
    return f"{n:,}".replace(",", " ")


NAME = Field("System name", SKILL_NAME_RULE, required=True, pattern=SKILL_NAME_RE)
DISPLAY_NAME = Field("Display name", f"at most {DISPLAY_NAME_MAX_LENGTH} characters", required=True)
COST = Field("Cost", f"a whole number from 0 to {_thousands(COST_MAX)}", required=True, number=True)

SKILL_FORM = {
    "name": NAME,
    "display_name": DISPLAY_NAME,
    "description": Field("Description", f"at most {DESCRIPTION_MAX_LENGTH} characters"),
    "cost": COST,
}
COST_FORM = {"cost": COST}
CREDIT_FORM = {
    "type": Field("Type", "GRANT, PURCHASE or ADJUSTMENT", required=True),
    "amount": Field("Amount", "a whole number", required=True, number=True),
    "description": Field("Description", f"at most {TX_DESCRIPTION_MAX_LENGTH} characters"),
    "expires_at": Field("Expiry", "a date and time (UTC)", utc=True, pattern=LOCAL_TIME),
    "priority": Field("Priority", "a whole number from 0 to 100", number=True),
    "category": Field("Category", "paid or promotional"),
}

MAX_CREDITS_FIELD = Field(
    "Max credits", f"a whole number from 0 to {_thousands(MAX_CREDITS)}", required=True, number=True
)
LIMIT_FORM = {
    "window": Field("Window", "minute, hour, day or month", required=True),
    "max_credits": MAX_CREDITS_FIELD,
    "member": Field("Member", USER_ID_RULE, pattern=USER_ID_RE),
    "skill": Field("Skill", SKILL_NAME_RULE, pattern=SKILL_NAME_RE),
}
LIMIT_CHANGE_FORM = {"max_credits": MAX_CREDITS_FIELD}
RECHARGE_FORM = {
    "threshold": Field(
        "Threshold", f"a whole number from 0 to {_thousands(2**53)}", required=True, number=True
    ),
    "amount": Field(
        "Amount", f"a whole number from 1 to {_thousands(2**53)}", required=True, number=True
    ),
    "max_per_month": Field(
        "Monthly cap", f"a whole number from 1 to {_thousands(2**53)}", number=True
    ),
    "category": Field("Category", "paid or promotional"),
    "priority": Field("Priority", "a whole number from 0 to 100", number=True),
    "expires_in_days": Field("Lifetime", "a whole number of days from 1 to 3 650", number=True),
}


def sentence(text: str) -> str:
    """A message as a sentence: a capital first letter and a full stop."""
    text = text.strip().rstrip(".")
    return f"{text[:1].upper()}{text[1:]}."


def _value(field: Field, raw: str, type_: Any) -> Any:
    """``raw`` as a value of ``type_``, or None if it is not one."""
    if field.pattern is not None and not field.pattern.fullmatch(raw):
        return None
    value: Any = raw
    if field.utc:
        value = f"{raw}:00Z" if len(raw) == 16 else f"{raw}Z"
    if field.number:
        if not WHOLE_NUMBER.fullmatch(raw):
            return None
        value = int(raw)
    try:
        return msgspec.convert(value, type_)
    except msgspec.ValidationError:
        return None


def read(
    struct: type[T], form: dict[str, str], fields: dict[str, Field]
) -> tuple[T | None, dict[str, str]]:
    """``form`` as a ``struct``, or None and a plain message for each wrong field."""
    types = {f.name: f.type for f in msgspec.structs.fields(struct)}
    values: dict[str, Any] = {}
    errors: dict[str, str] = {}
    for name, field in fields.items():
        raw = form.get(name, "").strip()
        if not raw:
            if field.required:
                errors[name] = f"{field.label} is required."
            continue
        value = _value(field, raw, types[name])
        if value is None:
            errors[name] = f"{field.label} must be {field.rule}."
        else:
            values[name] = value
    if errors:
        return None, errors
    try:
        return msgspec.convert(values, struct), {}
    except msgspec.ValidationError as exc:
        name, message = field_and_message(exc)
        label = fields[name].label if name in fields else name
        return None, {name: sentence(f"{label} {message}")}


def skill(form: dict[str, str]) -> tuple[SkillCreate | None, dict[str, str]]:
    return read(SkillCreate, form, SKILL_FORM)


def cost(form: dict[str, str]) -> tuple[SkillPatch | None, dict[str, str]]:
    return read(SkillPatch, form, COST_FORM)


def limit(form: dict[str, str]) -> tuple[LimitIn | None, dict[str, str]]:
    return read(LimitIn, form, LIMIT_FORM)


def limit_change(form: dict[str, str]) -> tuple[LimitPatch | None, dict[str, str]]:
    return read(LimitPatch, form, LIMIT_CHANGE_FORM)


def auto_recharge(form: dict[str, str]) -> tuple[AutoRechargeIn | None, dict[str, str]]:
    return read(AutoRechargeIn, form, RECHARGE_FORM)


def credit(form: dict[str, str]) -> tuple[CreditIn | None, dict[str, str]]:
    body, errors = read(CreditIn, form, CREDIT_FORM)
    if body is not None and expiry_passed(body):
        return None, {"expires_at": "Expiry must be in the future."}
    return body, errors
