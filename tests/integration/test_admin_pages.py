"""The admin pages without a browser: hostile form input, sessions and the login limit."""

from __future__ import annotations

from dataclasses import replace

import httpx
import pytest
import redis as redis_sync
from litestar.testing import AsyncTestClient

from skill_credits.admin_ui.session import SESSION_COOKIE
from skill_credits.app import create_app
from tests.integration.test_inputs import BAD_CURSORS
from tests.support.api import Api
from tests.support.databases import snapshot
from tests.support.processes import AppServer

FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.fixture(scope="module")
def own(settings):
    """Settings of the module's own: Redis keys apart (other tests count the login limit
    of the same client address), and a login limit that does not get in the way."""
    return replace(
        settings, redis_prefix=f"{settings.redis_prefix}pages:", login_attempts_per_minute=10_000
    )


@pytest.fixture(scope="module")
async def ui(own):
    app = create_app(own)
    async with AsyncTestClient(app=app, timeout=30) as c:
        yield c


async def log_in(c: AsyncTestClient, token: str) -> dict[str, str]:
    """Logs ``c`` in; returns the CSRF header its forms then need."""
    await c.get("/admin/login")
    csrf = {"x-csrftoken": c.cookies.get("sc_csrf", path="/admin")}
    r = await c.post("/admin/login", data={"api_key": token}, headers=csrf, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf


@pytest.fixture(scope="module")
async def world(api: Api, keys, ui):
    skill = (await api.create_skill(cost=2))["name"]
    user = await api.new_user(50)
    tx = (await api.charge(user, skill)).json()["id"]
    return {"skill": skill, "user": user, "tx": tx, "csrf": await log_in(ui, keys.admin)}


# (path, url-encoded form, field named by the 400)
HOSTILE_FORMS = [
    ("/admin/skills/A%00B/cost", "cost=5&version=1", "name"),
    ("/admin/skills/A%00B/active", "is_active=false&version=1", "name"),
    ("/admin/skills/{skill}/cost", "cost=5&version=1%00", "version"),
    ("/admin/skills/A%FFB/cost", "cost=5&version=1", "path"),
    ("/admin/skills", "name=NEW_ONE&display_name=x%00&cost=1", "display_name"),
    ("/admin/skills", "name=NEW_ONE&display_name=x&cost=1&description=%C3", "description"),
    ("/admin/users/{user}/credits", "amount=5&type=GRANT&idem=%00", "idem"),
    ("/admin/users/{user}/credits", "amount=5&type=GRANT&idem=%FF", "idem"),
    ("/admin/users/{user}/credits", "amount=5&type=GRANT&description=a%00b", "description"),
    ("/admin/users/{user}/credits", "amount=5&type=GRANT&desc%FFription=x", "desc\ufffdription"),
    ("/admin/transactions/{tx}/refund", "user_id={user}&idem=%00", "idem"),
    ("/admin/transactions/{tx}/refund", "user_id={user}&description=a%00b", "description"),
    ("/admin/transactions/{tx}/refund", "user_id={user}&description=%ED%A0%80", "description"),
    ("/admin/users/{user}/auto-recharge", "threshold=1%00&amount=5", "threshold"),
    ("/admin/users/{user}/auto-recharge", "threshold=1&amount=5&category=%FF", "category"),
    ("/admin/login", "api_key=sck_%00", "api_key"),
]


@pytest.mark.parametrize(("path", "form", "field"), HOSTILE_FORMS)
async def test_hostile_form_fields_are_a_400_that_changes_nothing(
    ui, world, db, path, form, field
) -> None:
    before = await snapshot(db)
    r = await ui.post(
        path.format(**world),
        content=form.format(**world).encode(),
        headers=FORM | world["csrf"],
        follow_redirects=False,
    )
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (r.json()["code"], r.json()["field"]) == ("validation_error", field)
    assert await snapshot(db) == before


@pytest.mark.parametrize("query", ["user_id=a%00b", "user_id=%FF", "cursor=%00"])
async def test_hostile_query_is_a_400(ui, world, query) -> None:
    r = await ui.get(f"/admin/users?{query}")
    assert (r.status_code, r.json()["code"]) == (400, "validation_error"), r.text


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_a_page_link_past_the_log_is_a_400_page(ui, world, cursor) -> None:
    r = await ui.get("/admin/users", params={"user_id": world["user"], "cursor": cursor})
    assert r.status_code == 400 and "That page link is not valid." in r.text


def session_keys(settings) -> set[bytes]:
    r = redis_sync.Redis.from_url(settings.redis_url)
    return set(r.scan_iter(match=f"{settings.redis_prefix}sessions*", count=1000))


def session_cookies(r) -> list[str]:
    return [c for c in r.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)]


async def test_only_a_login_stores_a_session(own, keys) -> None:
    before = session_keys(own)
    async with AsyncTestClient(app=create_app(own), timeout=30) as c:
        for path in ("/admin/login", "/admin/skills", "/admin/users", "/admin/login"):
            r = await c.get(path, follow_redirects=False)
            assert r.status_code in (200, 303) and session_cookies(r) == [], r.headers
        made_up = {"Cookie": f"{SESSION_COOKIE}=made-up"}
        r = await c.get("/admin/login", headers=made_up)
        assert session_cookies(r) == [
            f"{SESSION_COOKIE}=null; HttpOnly; Max-Age=0; Path=/admin; SameSite=strict"
        ]
        assert session_keys(own) == before
        await log_in(c, keys.admin)
        assert len(session_keys(own) - before) == 1
        await c.post("/admin/logout", headers={"x-csrftoken": c.cookies.get("sc_csrf")})
        assert session_keys(own) == before


@pytest.mark.parametrize("scheme", ["https", "http"])
async def test_the_session_cookie_is_secure_over_https(own, keys, scheme) -> None:
    app = create_app(own)
    async with AsyncTestClient(app=app, base_url=f"{scheme}://testserver.local") as c:
        await c.get("/admin/login")
        csrf = {"x-csrftoken": c.cookies.get("sc_csrf", path="/admin")}
        r = await c.post("/admin/login", data={"api_key": keys.admin}, headers=csrf)
        (cookie,) = session_cookies(r.history[0])
        assert ("; Secure" in cookie) == (scheme == "https"), cookie
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        # the session works over that scheme (a Secure cookie comes back on HTTPS)
        assert r.status_code == 200 and str(r.url).endswith("/admin/skills")


@pytest.mark.parametrize("proxies", ["", "127.0.0.1"])
def test_forwarded_headers_count_only_from_named_proxies(
    server_env, settings, keys, monkeypatch, proxies
):
    """By default (FORWARDED_ALLOW_IPS unset) X-Forwarded-For cannot pick the address the
    login limit counts, nor X-Forwarded-Proto the scheme; the setting names the proxies
    that may."""
    monkeypatch.delenv("FORWARDED_ALLOW_IPS", raising=False)
    env = server_env | {
        "REDIS_PREFIX": f"{settings.redis_prefix}fwd{len(proxies)}:",
        "LOGIN_ATTEMPTS_PER_MINUTE": "2",
    }
    server = AppServer(env | ({"FORWARDED_ALLOW_IPS": proxies} if proxies else {}))
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=20) as c:
            c.get("/admin/login", headers={"X-Forwarded-Proto": "https"})
            csrf = {"x-csrftoken": c.cookies["sc_csrf"]}
            codes = []
            for i in range(3):
                r = c.post(
                    "/admin/login",
                    data={"api_key": keys.admin},
                    headers=csrf
                    | {"X-Forwarded-For": f"198.51.100.{i}", "X-Forwarded-Proto": "https"},
                )
                codes.append(r.status_code)
        if proxies:  # each forwarded address has its own count; the proxy said HTTPS
            assert codes == [303, 303, 303], codes
            assert "; Secure" in session_cookies(r)[0]
        else:  # one count for the one real peer, whatever the header says
            assert codes == [303, 303, 429], codes
    finally:
        server.stop()


async def test_a_refund_the_service_would_refuse_is_not_offered(ui, api: Api, world) -> None:
    """The confirmation page asks the ledger service (as the API's refund would answer):
    a grant, a charge refunded already and an unknown id are not offered for refund."""
    grant = await api.credit(world["user"], 5)
    charge = (await api.charge(world["user"], world["skill"])).json()["id"]
    r = await api.c.post(f"/v1/transactions/{charge}/refund", headers=api.keys.auth("service"))
    assert r.status_code == 201, r.text
    for tx, why in [(grant["id"], "it is a GRANT"), (charge, "it was refunded already")]:
        r = await ui.get(f"/admin/transactions/{tx}/refund", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith(world["user"])
        page = await ui.get(r.headers["location"])
        assert f"That transaction cannot be refunded: {why}." in page.text
    r = await ui.get(f"/admin/transactions/{world['tx']}/refund")
    assert r.status_code == 200 and "Yes, refund 2 credits" in r.text
    r = await ui.get("/admin/transactions/00000000-0000-0000-0000-000000000000/refund")
    assert r.status_code == 404


async def test_the_user_page_shows_grants_by_category_and_every_rows_sources(
    ui, api: Api, world
) -> None:
    """A grant made with the form's expiry, priority and category; the page lists the
    active grants in spending order, the balance by category, each debit's sources and
    the EXPIRY rows."""
    import asyncio
    import re
    from datetime import UTC, datetime, timedelta

    user = await api.new_user(10)  # a GRANT: promotional, priority 50, never expires
    soon = (datetime.now(UTC) + timedelta(days=3)).strftime("%Y-%m-%dT%H:%M")
    form = {
        "type": "PURCHASE",
        "amount": "7",
        "expires_at": soon,
        "priority": "5",
        "category": "promotional",
        "idem": "grant-form-1",
    }
    r = await ui.post(
        f"/admin/users/{user}/credits", data=form, headers=world["csrf"], follow_redirects=False
    )
    assert r.status_code == 303, r.text
    wrong = await ui.post(
        f"/admin/users/{user}/credits",
        data=form | {"priority": "101", "expires_at": "tomorrow", "idem": "grant-form-2"},
        headers=world["csrf"],
    )
    assert wrong.status_code == 400
    assert "Priority must be a whole number from 0 to 100." in wrong.text
    assert "Expiry must be a date and time (UTC)." in wrong.text
    charged = (await api.charge(user, world["skill"], units=4)).json()
    assert [s["amount"] for s in charged["sources"]] == [7, 1]
    page = (await ui.get(f"/admin/users?user_id={user}")).text
    assert re.search(r'id="credits-paid">0<', page) and re.search(
        r'id="credits-promotional">9<', page
    )
    grants_table = page.split('id="grants"', 1)[1].split("</table>", 1)[0]
    assert grants_table.count("<tr data-id=") == 1  # the 7 is used up; the 10 is left
    assert ">9<" in grants_table and "never" in grants_table
    row = page.split(f'data-id="{charged["id"]}"', 1)[1].split("</tr>", 1)[0]
    for s in charged["sources"]:
        assert s["grant_id"][:8] in row
    # an EXPIRY row in the log
    lapsing = datetime.now(UTC) + timedelta(seconds=1)
    await api.c.post(
        f"/v1/users/{user}/credits",
        json={"amount": 2, "type": "GRANT", "expires_at": lapsing.isoformat()},
        headers=api.keys.auth("admin"),
    )
    await asyncio.sleep(max(0.0, (lapsing - datetime.now(UTC)).total_seconds()) + 0.05)
    page = (await ui.get(f"/admin/users?user_id={user}")).text
    assert 'data-type="EXPIRY"' in page and "badge t-expiry" in page


async def test_the_user_page_sets_changes_and_removes_the_auto_recharge_rule(
    ui, api: Api, world
) -> None:
    user = await api.new_user(20)
    page = (await ui.get(f"/admin/users?user_id={user}")).text
    assert "No auto-recharge" in page and "No top-up requests." in page
    wrong = await ui.post(
        f"/admin/users/{user}/auto-recharge",
        data={"threshold": "-1", "amount": "", "priority": "101", "expires_in_days": "9999"},
        headers=world["csrf"],
    )
    assert wrong.status_code == 400
    for message in (
        "Threshold must be a whole number from 0 to",
        "Amount is required.",
        "Priority must be a whole number from 0 to 100.",
        "Lifetime must be a whole number of days from 1 to 3 650.",
    ):
        assert message in wrong.text, message
    assert (
        await api.c.get(f"/v1/users/{user}/auto-recharge", headers=api.keys.auth("service"))
    ).status_code == 404
    form = {
        "threshold": "50",
        "amount": "30",
        "max_per_month": "90",
        "category": "paid",
        "priority": "40",
        "expires_in_days": "7",
    }
    r = await ui.post(
        f"/admin/users/{user}/auto-recharge",
        data=form,
        headers=world["csrf"],
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page = (await ui.get(f"/admin/users?user_id={user}")).text
    assert "A top-up of 30 is asked for." in page  # 20 is at or below 50: asked at once
    rule = page.split('id="recharge-rule"', 1)[1].split("</dl>", 1)[0]
    assert "<strong>30</strong>" in rule and "<strong>50</strong>" in rule
    assert "30 of 90 requested" in rule and "lasting 7 days" in rule
    requests = page.split('id="recharges"', 1)[1].split("</table>", 1)[0]
    assert requests.count('data-status="pending"') == 1
    r = await ui.post(
        f"/admin/users/{user}/auto-recharge",
        data=form | {"amount": "35", "max_per_month": ""},
        headers=world["csrf"],
        follow_redirects=False,
    )
    assert r.status_code == 303
    rule = (
        await api.c.get(f"/v1/users/{user}/auto-recharge", headers=api.keys.auth("service"))
    ).json()
    assert (rule["amount"], rule["max_per_month"]) == (35, None)
    r = await ui.post(
        f"/admin/users/{user}/auto-recharge/remove", headers=world["csrf"], follow_redirects=False
    )
    assert r.status_code == 303
    page = (await ui.get(f"/admin/users?user_id={user}")).text
    assert "Auto-recharge removed; a pending request is canceled." in page
    assert 'data-status="canceled"' in page and "No auto-recharge" in page
