"""The one confirmation page (confirm.html), of the skills page's disable and the users
page's refund."""

from __future__ import annotations

from litestar.response import Template


def confirm(
    *,
    title: str,
    consequence: str,
    facts: dict[str, str],
    action: str,
    fields: dict[str, str],
    button: str,
    cancel: str,
) -> Template:
    """The one confirmation page (disable, refund): what will happen, the facts it acts
    on, and a form that does it; Cancel goes back with nothing done."""
    return Template(
        "confirm.html",
        context={
            "title": title,
            "consequence": consequence,
            "facts": facts,
            "action": action,
            "fields": fields,
            "button": button,
            "cancel": cancel,
        },
    )
