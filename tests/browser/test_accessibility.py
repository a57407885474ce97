"""Every admin page at a desktop and a phone width: axe-core, times, no sideways scroll.

One walk over the pages, checking each for what every page must do:
- axe-core finds no violation of impact serious or critical (contrast, names of
  controls, landmarks ...); the message lists each with the elements it was found on;
- every ``<time>`` has a valid ``datetime`` in UTC to the second (``...T16:07:12Z``) and
  says "UTC";
- nothing is wider than the screen, not even inside a scrolling table.
"""

from __future__ import annotations

import os
import re

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.support.browser import charge, login
from tests.support.run import unique

WIDTHS = (1280, 390)
BLOCKING = {"serious", "critical"}
AXE = Axe()
UTC_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
OVERFLOWING = """() => [document.documentElement, ...document.querySelectorAll('.table-wrap')]
    .filter(e => e.scrollWidth > e.clientWidth).map(e => e.className || e.tagName)"""


def _problems(page, where: str) -> list[str]:
    if os.environ.get("ADMIN_UI_SHOTS"):  # a folder: a full-page picture of each page seen
        page.screenshot(path=f"{os.environ['ADMIN_UI_SHOTS']}/{where}.png", full_page=True)
    found = [
        f"{where}: {v['id']} ({v['impact']}): {v['help']} at "
        + ", ".join(" ".join(n["target"]) for n in v["nodes"])
        for v in AXE.run(page).response["violations"]
        if v["impact"] in BLOCKING
    ]
    for stamp, text in page.locator("time").evaluate_all(
        "ts => ts.map(t => [t.getAttribute('datetime'), t.textContent])"
    ):
        if not (stamp and UTC_DATETIME.fullmatch(stamp) and text.endswith(" UTC")):
            found.append(f"{where}: <time datetime={stamp!r}>{text}</time>")
    found += [f"{where}: {e} is wider than the screen" for e in page.evaluate(OVERFLOWING)]
    return found


def test_every_admin_page_at_desktop_and_phone_width(page, keys, http) -> None:
    admin = keys.auth("admin")
    name = unique("AXE_TOOL")
    http.post(
        "/v1/admin/skills", headers=admin, json={"name": name, "display_name": "Axe", "cost": 5}
    )
    http.patch(f"/v1/admin/skills/{name}", headers=admin, json={"cost": 6, "is_active": False})
    http.patch(f"/v1/admin/skills/{name}", headers=admin, json={"is_active": True})
    user = unique("axe").lower()
    http.post(f"/v1/users/{user}/credits", headers=admin, json={"amount": 50, "type": "GRANT"})
    refunded = charge(http, keys, user, name).json()["id"]
    http.post(f"/v1/transactions/{refunded}/refund", headers=admin)
    open_charge = charge(http, keys, user, name).json()["id"]
    # a limit and a member's charge: the limits table and the log's member column
    limit = {"window": "day", "max_credits": 100, "member": "ann"}
    http.post(f"/v1/users/{user}/limits", headers=admin, json=limit)
    http.post("/v1/charges", json={"user_id": user, "skill": name, "member": "ann"}, headers=admin)
    # an auto-recharge rule, low already: the rule, its pending request and a failed one
    rule = {"threshold": 100, "amount": 30, "max_per_month": 300}
    asked = http.put(f"/v1/users/{user}/auto-recharge", headers=admin, json=rule).json()
    http.post(
        f"/v1/recharges/{asked['pending']['id']}/fail", headers=admin, json={"reason": "declined"}
    )
    http.put(f"/v1/users/{user}/auto-recharge", headers=admin, json=rule)
    pages = {
        "skills": "/admin/skills",
        "history": f"/admin/skills/{name}/history",
        "confirm-disable": f"/admin/skills/{name}/disable",
        "users": "/admin/users",
        "a-user": f"/admin/users?user_id={user}",
        "a-member": f"/admin/users?user_id={user}&member=ann",
        "confirm-refund": f"/admin/transactions/{open_charge}/refund",
        "usage": "/admin/usage",
        "usage-of-a-user-by-hour": f"/admin/usage?user_id={user}&interval=hour",
        "usage-with-an-error": "/admin/usage?from=March",
    }
    found: list[str] = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 860})
        page.context.clear_cookies()
        login(page, "not a key")
        expect(page.locator("#login-error")).to_be_visible()
        found += _problems(page, f"login-with-an-error@{width}")
        login(page, keys.admin)
        expect(page).to_have_url(re.compile(r"/admin/skills$"))
        for label, path in pages.items():
            response = page.goto(path)
            status = 400 if label.endswith("-with-an-error") else 200
            assert response is not None and response.status == status, (label, response.status)
            assert response.url.endswith(path), (label, response.url)
            found += _problems(page, f"{label}@{width}")
        page.goto("/admin/skills")
        page.get_by_text("+ Add New Skill").click()
        page.get_by_role("button", name="Create").click()
        expect(page.locator("#name-error")).to_be_visible()
        found += _problems(page, f"skills-with-field-errors@{width}")
        page.goto(f"/admin/users?user_id={user}")
        page.get_by_text("Grant or adjust credits").click()
        page.get_by_role("button", name="Save").click()
        expect(page.locator("#amount-error")).to_be_visible()
        found += _problems(page, f"credit-form-with-field-errors@{width}")
        page.get_by_text("Add a spend limit").click()
        page.get_by_role("button", name="Add limit").click()
        expect(page.locator("#max_credits-error")).to_be_visible()
        found += _problems(page, f"limit-form-with-field-errors@{width}")
    assert not found, "\n".join(found)
