"""The admin pages in a real browser, checked against the JSON API."""

from __future__ import annotations

import asyncio
import re

from playwright.sync_api import expect

from skill_credits.auth import create_key, revoke_key
from skill_credits.db import Database
from tests.support.browser import charge, login
from tests.support.run import run_in_thread, unique


def test_logged_out_pages_redirect_to_login(page) -> None:
    for path in ["/admin/skills", "/admin/users?user_id=x", "/admin/skills/X/history", "/admin"]:
        page.goto(path)
        expect(page).to_have_url(re.compile(r"/admin/login$"))


def test_service_or_wrong_keys_cannot_log_in(page, keys) -> None:
    for token in [keys.service, keys.revoked, "sck_nope_nope", "not even a key"]:
        login(page, token)
        expect(page.locator(".field-error")).to_contain_text("not a live admin key")
        page.goto("/admin/skills")
        expect(page).to_have_url(re.compile(r"/admin/login$"))


def test_add_edit_disable_enable_and_history(page, keys, http, screenshot_dir) -> None:
    login(page, keys.admin)
    expect(page).to_have_url(re.compile(r"/admin/skills$"))
    name = unique("MY_NEW_TOOL")

    # one control adds a skill
    adders = page.locator("a, button, summary").filter(has_text=re.compile("new skill", re.I))
    expect(adders).to_have_count(1)
    adders.click()

    # every wrong field is named at once, beside it, in plain words
    page.click("button:has-text('Create')")
    expect(page.locator("#name-error")).to_have_text("System name is required.")
    expect(page.locator("#display_name-error")).to_have_text("Display name is required.")
    expect(page.locator("#cost-error")).to_have_text("Cost is required.")
    expect(page.locator("#display_name")).to_have_attribute("aria-invalid", "true")
    page.fill("#name", "my tool")
    page.fill("#cost", "-3")
    page.click("button:has-text('Create')")
    expect(page.locator("#name-error")).to_contain_text(
        "System name must be uppercase letters, digits and underscores"
    )
    expect(page.locator("#display_name-error")).to_have_text("Display name is required.")
    expect(page.locator("#cost-error")).to_have_text(
        "Cost must be a whole number from 0 to 1 000 000 000."
    )
    expect(page.locator("main")).not_to_contain_text("Expected")

    page.fill("#name", name)
    page.fill("#display_name", "My Awesome Feature")
    page.fill("#description", "Writes the whole article")
    page.fill("#cost", "10")
    page.click("button:has-text('Create')")
    row = page.locator(f"#skill-{name}")
    expect(row.locator(".cost")).to_have_text("10")
    expect(row).to_contain_text("Active")

    user = unique("ui").lower()
    http.post(
        f"/v1/users/{user}/credits",
        json={"amount": 1000, "type": "GRANT"},
        headers=keys.auth("admin"),
    )
    assert charge(http, keys, user, name).json()["unit_cost"] == 10

    # Edit Cost: a wrong cost is named beside the row's field and nothing is saved
    row.locator("summary:has-text('Edit Cost')").click()
    row.locator("input[name=cost]").fill("ten")
    row.locator("button:has-text('Save')").click()
    expect(page.locator(f"#cost-{name}-error")).to_have_text(
        "Cost must be a whole number from 0 to 1 000 000 000."
    )
    expect(page.locator(f"#cost-{name}")).to_have_attribute("aria-invalid", "true")
    # then the very next API call uses the new cost, and the message says what changed
    row.locator("input[name=cost]").fill("17")
    row.locator("button:has-text('Save')").click()
    expect(page.locator(".flash.ok")).to_have_text(f"{name} saved (version 2): Cost 10 → 17.")
    expect(page.locator(f"#skill-{name} .cost")).to_have_text("17")
    assert charge(http, keys, user, name).json()["unit_cost"] == 17
    row.locator("summary:has-text('Edit Cost')").click()
    row.locator("button:has-text('Save')").click()  # the same cost again: no new version
    expect(page.locator(".flash.ok")).to_have_text(
        f"{name}: nothing to save, it was like that already."
    )

    # disable, with a confirmation step; the API refuses; enable again
    page.locator(f"#skill-{name}").get_by_role("link", name="Disable").click()
    expect(page.locator("h1")).to_contain_text(f"Disable {name}?")
    page.click(f"button:has-text('Yes, disable {name}')")
    expect(page.locator(".flash.ok")).to_have_text(f"{name} saved (version 3): Disabled.")
    expect(page.locator(f"#skill-{name}")).to_contain_text("Disabled")
    r = charge(http, keys, user, name)
    assert (r.status_code, r.json()["code"]) == (403, "skill_disabled")
    page.locator(f"#skill-{name}").get_by_role("button", name="Enable").click()
    expect(page.locator(".flash.ok")).to_have_text(f"{name} saved (version 4): Enabled.")
    expect(page.locator(f"#skill-{name}")).to_contain_text("Active")
    assert charge(http, keys, user, name).status_code == 201

    page.screenshot(path=str(screenshot_dir / "admin-skills.png"), full_page=True)

    page.locator(f"#skill-{name}").get_by_role("link", name="History").click()
    expect(page.locator("h1")).to_contain_text(name)
    rows = page.locator("tbody tr")
    expect(rows).to_have_count(4)  # created, cost, disabled, enabled
    expect(rows.nth(0)).to_contain_text("Enabled")
    expect(rows.nth(1)).to_contain_text("Disabled")
    expect(rows.nth(2)).to_contain_text("Cost 10 → 17")
    expect(rows.nth(3)).to_contain_text("Created")
    expect(rows.nth(3)).to_contain_text("Cost: 10")
    expect(rows.nth(0)).to_contain_text(keys.admin_name)
    api_history = http.get(f"/v1/admin/skills/{name}/history", headers=keys.auth("admin")).json()
    assert [h["version"] for h in api_history["items"]] == [4, 3, 2, 1]


def test_two_admins_editing_at_once_get_changed_meanwhile(
    context, browser, ui_server, keys, http
) -> None:
    skill = http.post(
        "/v1/admin/skills",
        headers=keys.auth("admin"),
        json={"name": unique("TWO_ADMINS"), "display_name": "t", "cost": 5},
    ).json()
    first, second = context.new_page(), context.new_page()
    login(first, keys.admin)
    login(second, keys.admin)
    for p in (first, second):  # both open the page at version 1
        p.goto("/admin/skills")
        p.locator(f"#skill-{skill['name']} summary:has-text('Edit Cost')").click()
    first.locator(f"#skill-{skill['name']} input[name=cost]").fill("6")
    first.locator(f"#skill-{skill['name']} button:has-text('Save')").click()
    expect(first.locator(".flash.ok")).to_be_visible()
    second.locator(f"#skill-{skill['name']} input[name=cost]").fill("7")
    second.locator(f"#skill-{skill['name']} button:has-text('Save')").click()
    expect(second.locator(".flash.error")).to_contain_text("changed meanwhile")
    expect(second.locator(f"#skill-{skill['name']} .cost")).to_have_text("6")
    got = http.get(f"/v1/admin/skills/{skill['name']}", headers=keys.auth("admin")).json()
    assert (got["cost"], got["version"]) == (6, 2)


def test_user_page_grant_and_refund(page, keys, http, screenshot_dir) -> None:
    skill = http.post(
        "/v1/admin/skills",
        headers=keys.auth("admin"),
        json={"name": unique("UI_REFUND"), "display_name": "Refundable", "cost": 30},
    ).json()
    user = unique("customer").lower()
    login(page, keys.admin)
    page.goto(f"/admin/users?user_id={user}")
    expect(page.locator(".flash.error")).to_contain_text("No user")

    # the credit form names its wrong fields beside them, in plain words
    save = page.locator("form.grid button:has-text('Save')")
    save.click()
    expect(page.locator("#amount-error")).to_have_text("Amount is required.")
    page.fill("#amount", "lots")
    save.click()
    expect(page.locator("#amount-error")).to_have_text("Amount must be a whole number.")
    page.fill("#amount", "-5")
    save.click()
    expect(page.locator("#amount-error")).to_have_text("Amount must be > 0 for GRANT.")
    expect(page.locator("#amount")).to_have_value("-5")

    page.select_option("#type", "GRANT")
    page.fill("#amount", "100")
    page.fill("#credit-description", "welcome bonus")
    save.click()
    expect(page.locator(".flash.ok")).to_contain_text("GRANT of +100")
    expect(page.locator("#credits")).to_have_text("100")

    first, second = (charge(http, keys, user, skill["name"]).json()["id"] for _ in range(2))
    page.reload()
    expect(page.locator("#credits")).to_have_text("40")

    # a refund asks first; Cancel changes nothing
    page.locator(f"#tx-{first}").get_by_role("link", name="Refund").click()
    expect(page.locator("h1")).to_have_text(f"Refund 30 credits to {user}?")
    expect(page.locator("main")).to_contain_text(f"{skill['name']} ×1 @ 30")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#credits")).to_have_text("40")
    page.locator(f"#tx-{first}").get_by_role("link", name="Refund").click()
    page.get_by_role("button", name="Yes, refund 30 credits").click()
    expect(page.locator(".flash.ok")).to_contain_text("Refunded 30")
    expect(page.locator("#credits")).to_have_text("70")
    api_user = http.get(f"/v1/users/{user}", headers=keys.auth("service")).json()
    assert api_user["credits"] == 70

    # the REFUND row names the skill and links to the charge it refunds, on this page
    refund = page.locator("tr[data-type=REFUND]")
    expect(refund).to_contain_text(skill["name"])
    refund.get_by_role("link", name="See the refunded charge").click()
    expect(page).to_have_url(re.compile(rf"/admin/users\?user_id={user}#tx-{first}$"))
    expect(page.locator(f"#tx-{first}:target")).to_contain_text("refunded")

    page.click("summary:has-text('Grant or adjust')")
    page.select_option("#type", "ADJUSTMENT")
    page.fill("#amount", "-500")
    page.click("form.grid button:has-text('Save')")
    expect(page.locator(".flash.error")).to_contain_text("below the 500 required")
    expect(page.locator("#credits")).to_have_text("70")
    page.screenshot(path=str(screenshot_dir / "admin-users.png"), full_page=True)

    # ... or on the page that starts with it, when newer entries pushed it off this one
    for _ in range(24):
        http.post(
            f"/v1/users/{user}/credits",
            json={"amount": 1, "type": "GRANT"},
            headers=keys.auth("admin"),
        )
    page.goto(f"/admin/transactions/{second}/refund")
    page.get_by_role("button", name="Yes, refund 30 credits").click()
    expect(page.locator("#credits")).to_have_text("124")
    expect(page.locator(f"#tx-{second}")).to_have_count(0)
    page.locator("tr[data-type=REFUND]").first.get_by_role(
        "link", name="See the refunded charge"
    ).click()
    expect(page).to_have_url(re.compile(rf"cursor=.*#tx-{second}$"))
    expect(page.locator(f"#tx-{second}:target")).to_contain_text("refunded")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto("/admin/skills")
    page.screenshot(path=str(screenshot_dir / "admin-skills-phone.png"), full_page=False)


def test_user_page_limits_and_member_filter(page, keys, http) -> None:
    admin, service = keys.auth("admin"), keys.auth("service")
    skill = http.post(
        "/v1/admin/skills",
        headers=admin,
        json={"name": unique("UI_LIMIT"), "display_name": "Limited", "cost": 10},
    ).json()["name"]
    user = unique("team").lower()
    http.post(f"/v1/users/{user}/credits", headers=admin, json={"amount": 100, "type": "GRANT"})

    def spend(member: str) -> int:
        body = {"user_id": user, "skill": skill, "member": member}
        return http.post("/v1/charges", json=body, headers=service).status_code

    login(page, keys.admin)
    page.goto(f"/admin/users?user_id={user}")
    expect(page.locator("#limits")).to_contain_text("No limits")
    page.get_by_text("Add a spend limit").click()
    page.fill("#max_credits", "lots")
    page.get_by_role("button", name="Add limit").click()
    expect(page.locator("#max_credits-error")).to_have_text(
        "Max credits must be a whole number from 0 to 9 007 199 254 740 992."
    )
    page.fill("#max_credits", "25")
    page.fill("#limit-member", "ann")
    page.get_by_role("button", name="Add limit").click()
    expect(page.locator(".flash.ok")).to_contain_text("Day limit of 25 for ann added.")
    row = page.locator("#limits tbody tr")
    expect(row).to_have_count(1)
    expect(row.locator(".spent")).to_have_text("0")
    expect(row.locator(".max")).to_have_text("25")
    # the same limit again is refused beside the field, and nothing is added
    page.get_by_text("Add a spend limit").click()
    page.fill("#max_credits", "5")
    page.fill("#limit-member", "ann")
    page.get_by_role("button", name="Add limit").click()
    expect(page.locator("#window-error")).to_contain_text("already")
    expect(page.locator("#limits tbody tr")).to_have_count(1)

    assert [spend("ann"), spend("ann"), spend("ann"), spend("bob")] == [201, 201, 429, 201]
    page.goto(f"/admin/users?user_id={user}")
    expect(row.locator(".spent")).to_have_text("20")
    row.locator("input[name=max_credits]").fill("40")
    row.get_by_role("button", name="Change max").click()
    expect(page.locator(".flash.ok")).to_contain_text("Day limit of 40 for ann now.")
    expect(row.locator(".max")).to_have_text("40")
    assert spend("ann") == 201

    # the log shows each row's member and can show one member's rows alone
    expect(page.locator("#transactions")).to_contain_text("bob")
    page.fill("#member", "ann")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("h2", has_text="Log")).to_contain_text("of member ann")
    expect(page.locator("#transactions tbody tr")).to_have_count(3)
    expect(page.locator("#transactions")).not_to_contain_text("bob")

    row.get_by_role("button", name="Remove the day limit").click()
    expect(page.locator(".flash.ok")).to_contain_text("Limit removed.")
    expect(page.locator("#limits")).to_contain_text("No limits")
    assert http.get(f"/v1/users/{user}/limits", headers=service).json()["items"] == []


def test_csrf_less_post_is_refused(page, keys, http) -> None:
    login(page, keys.admin)
    name = unique("CSRF")
    response = page.request.post(
        "/admin/skills", form={"name": name, "display_name": "x", "cost": "1"}
    )
    assert response.status == 403
    response = page.request.post(
        "/admin/skills",
        form={"name": name, "display_name": "x", "cost": "1", "_csrf_token": "forged"},
    )
    assert response.status == 403
    assert http.get(f"/v1/admin/skills/{name}", headers=keys.auth("admin")).status_code == 404


def test_logout_revocation_and_session_fixation(page, context, keys, settings, ui_server) -> None:
    # a planted session id is not the one the login uses
    context.add_cookies(
        [
            {
                "name": "sc_admin_session",
                "value": "attacker-chosen",
                "domain": "127.0.0.1",
                "path": "/admin",
            }
        ]
    )
    login(page, keys.admin)
    expect(page).to_have_url(re.compile(r"/admin/skills$"))
    session = next(c for c in context.cookies() if c["name"] == "sc_admin_session")
    assert session["value"] != "attacker-chosen"
    assert session["httpOnly"] and session["sameSite"] == "Strict"

    headers = page.request.get("/admin/skills").headers
    assert "frame-ancestors 'none'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "same-origin"

    page.click("button:has-text('Log out')")
    expect(page).to_have_url(re.compile(r"/admin/login$"))
    page.goto("/admin/skills")
    expect(page).to_have_url(re.compile(r"/admin/login$"))

    # a session whose key is revoked is sent back to the login page
    name = unique("temp-admin")
    token = run_in_thread(asyncio.run, _key(settings, name, revoke=False))
    login(page, token)
    expect(page).to_have_url(re.compile(r"/admin/skills$"))
    run_in_thread(asyncio.run, _key(settings, name, revoke=True))
    page.goto("/admin/skills")
    expect(page).to_have_url(re.compile(r"/admin/login$"))


async def _key(settings, name: str, revoke: bool) -> str:
    db = Database(settings)
    try:
        async with db.engine.begin() as conn:
            if revoke:
                await revoke_key(conn, name)
                return ""
            return (await create_key(conn, name, "admin")).token
    finally:
        await db.dispose()


def test_usage_page_draws_its_charts_without_javascript(
    browser, ui_server, keys, http, screenshot_dir
) -> None:
    """Charts are SVG from the server: with JavaScript off they show, with their figures
    in a table, the top users link to their pages, and the CSV is what the page shows."""
    admin = keys.auth("admin")
    skill = unique("UI_USAGE")
    http.post(
        "/v1/admin/skills", headers=admin, json={"name": skill, "display_name": "U", "cost": 4}
    )
    user = unique("usage").lower()
    http.post(f"/v1/users/{user}/credits", headers=admin, json={"amount": 100, "type": "GRANT"})
    http.post(f"/v1/users/{user}/credits", headers=admin, json={"amount": 100, "type": "PURCHASE"})
    for units in (1, 2, 3, 20):  # 4 + 8 + 12 + 80: promotional, then paid
        r = http.post(
            "/v1/charges",
            headers=keys.auth("service"),
            json={"user_id": user, "skill": skill, "units": units},
        )
        assert r.status_code == 201, r.text
    ctx = browser.new_context(
        base_url=ui_server.url, java_script_enabled=False, viewport={"width": 1280, "height": 860}
    )
    try:
        page = ctx.new_page()
        login(page, keys.admin)
        page.goto(f"/admin/usage?skill={skill}")
        for chart in ("by-skill", "by-category"):
            expect(page.locator(f"figure:has(#{chart}) svg")).to_be_visible()
        page.get_by_text("Figures of “Credits consumed by category”").click()
        cells = page.locator("#by-category tbody tr").first.locator("td")
        figures = dict(
            zip(
                page.locator("#by-category thead th.num").all_text_contents(),
                cells.all_inner_texts()[1:],
                strict=True,
            )
        )
        assert figures == {"promotional": "100", "paid": "4"}
        page.screenshot(path=str(screenshot_dir / "admin-usage.png"), full_page=True)
        page.get_by_role("link", name=user).click()
        expect(page).to_have_url(re.compile(rf"/admin/users\?user_id={user}$"))
        expect(page.locator("#runway")).to_contain_text("days")
        with page.expect_download() as download:
            page.goto(f"/admin/usage?skill={skill}")
            page.get_by_role("link", name="Download CSV").click()
        text = open(download.value.path(), encoding="utf-8").read()
        assert text.splitlines()[0] == "start,group,charges,units,consumed,refunded"
        assert text.splitlines()[1].endswith(f",{skill},4,26,104,0")
    finally:
        ctx.close()
