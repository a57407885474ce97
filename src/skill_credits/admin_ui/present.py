"""How the admin pages show times and skill edits, registered on the Jinja engine.

Every time is shown in UTC by the one ``utc`` filter: a ``<time>`` whose ``datetime`` is
whole seconds with a ``Z`` (the HTML checker refuses Python's six-digit fractions), and
text that ends in "UTC". Every skill edit is worded by ``change_text``, for the history
page and for the message after a save alike ("Cost 10 → 12", "Disabled").
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from litestar.plugins.jinja import JinjaTemplateEngine
from markupsafe import Markup

LABELS = {
    "display_name": "Display name",
    "description": "Description",
    "cost": "Cost",
    "is_active": "Status",
}


def utc(moment: datetime) -> Markup:
    """``moment`` as ``<time datetime="2026-11-28T16:07:12Z">2026-11-28 16:07:12 UTC</time>``."""
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return Markup('<time datetime="{}">{} UTC</time>').format(
        f"{moment:%Y-%m-%dT%H:%M:%SZ}", f"{moment:%Y-%m-%d %H:%M:%S}"
    )


def _shown(field: str, value: Any) -> str:
    if field == "is_active":
        return "Active" if value else "Disabled"
    return "(none)" if value is None or value == "" else str(value)


def change_text(field: str, old: Any, new: Any, *, created: bool = False) -> str:
    """One field of an edit in words; ``created``: the value a skill was created with."""
    label = LABELS.get(field, field)
    if created:
        return f"{label}: {_shown(field, new)}"
    if field == "is_active":
        return "Enabled" if new else "Disabled"
    return f"{label} {_shown(field, old)} → {_shown(field, new)}"


def changes_text(changes: dict[str, list[Any]]) -> str:
    """Every field of one edit, e.g. "Cost 10 → 12, Disabled"."""
    return ", ".join(change_text(field, old, new) for field, (old, new) in changes.items())


def configure(engine: JinjaTemplateEngine) -> None:
    """``TemplateConfig.engine_callback``: the filters and functions the templates use."""
    engine.engine.filters["utc"] = utc
    engine.engine.globals["change_text"] = change_text
