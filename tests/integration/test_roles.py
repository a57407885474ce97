"""Every route x {no key, revoked key, service key, admin key}."""

from __future__ import annotations

import pytest

from skill_credits.auth import create_key, revoke_key
from tests.support.api import Api
from tests.support.run import unique


@pytest.fixture(scope="module")
async def world(api: Api):
    skill = await api.create_skill(cost=1, name=unique("ROLE"))
    user = await api.new_user(1000)
    return {"api": api, "skill": skill["name"], "user": user}


async def _routes(world):
    """(method, path, body, status for service, status for admin); fresh objects per call."""
    api: Api = world["api"]
    skill, user = world["skill"], world["user"]
    tx = (await api.charge(user, skill)).json()["id"]
    hold_body = {"user_id": user, "skill": skill}
    admin = api.keys.auth("admin")
    to_capture = (await api.c.post("/v1/holds", json=hold_body, headers=admin)).json()["id"]
    to_release = (await api.c.post("/v1/holds", json=hold_body, headers=admin)).json()["id"]
    return [
        ("POST", "/v1/holds", hold_body, 201, 201),
        ("GET", f"/v1/holds/{to_capture}", None, 200, 200),
        ("POST", f"/v1/holds/{to_capture}/capture", {}, 201, 201),
        ("POST", f"/v1/holds/{to_release}/release", None, 200, 200),
        ("POST", "/v1/charges", {"user_id": user, "skill": skill}, 201, 201),
        ("POST", f"/v1/users/{user}/credits", {"amount": 5, "type": "PURCHASE"}, 201, 201),
        ("POST", f"/v1/users/{user}/credits", {"amount": 5, "type": "GRANT"}, 201, 201),
        ("POST", f"/v1/users/{user}/credits", {"amount": -1, "type": "ADJUSTMENT"}, 403, 201),
        ("GET", f"/v1/users/{user}", None, 200, 200),
        ("GET", f"/v1/users/{user}/transactions", None, 200, 200),
        ("GET", f"/v1/transactions/{tx}", None, 200, 200),
        ("POST", f"/v1/transactions/{tx}/refund", {}, 201, 201),
        ("GET", "/v1/skills", None, 200, 200),
        ("GET", "/v1/events", None, 200, 200),
        ("PUT", f"/v1/users/{user}/low-balance-threshold", {"low_balance_threshold": 1}, 200, 200),
        ("GET", "/v1/admin/skills", None, 403, 200),
        (
            "POST",
            "/v1/admin/skills",
            {"name": unique("R"), "display_name": "r", "cost": 1},
            403,
            201,
        ),
        ("GET", f"/v1/admin/skills/{skill}", None, 403, 200),
        ("PATCH", f"/v1/admin/skills/{skill}", {"description": unique("d")}, 403, 200),
        ("GET", f"/v1/admin/skills/{skill}/history", None, 403, 200),
    ]


@pytest.mark.parametrize("role", [None, "revoked", "service", "admin"])
async def test_role_matrix(world, role) -> None:
    api: Api = world["api"]
    for method, path, body, as_service, as_admin in await _routes(world):
        expected = {None: 401, "revoked": 401, "service": as_service, "admin": as_admin}[role]
        r = await api.c.request(method, path, json=body, headers=api.keys.auth(role))
        assert r.status_code == expected, (method, path, role, r.text)
        if expected in (401, 403):
            assert r.json()["code"] == ("unauthorized" if expected == 401 else "forbidden")


async def test_malformed_authorization_headers_are_401(client) -> None:
    for header in [
        "Bearer",
        "Bearer ",
        "Basic abc",
        "Bearer sck_x",
        "Bearer sck__",
        "Bearer a_b_c",
        "Bearer sck_0000000000000000_secret",
        "bearer " + "x" * 5000,
    ]:
        r = await client.get("/v1/skills", headers={"Authorization": header})
        assert r.status_code == 401, (header, r.text)


async def test_a_cached_key_revoked_fails_its_next_charge(world, db, run_id) -> None:
    """The charge route trusts this worker's cache of key hashes; the statement checks
    that the key is still live, and every refusal confirms it first."""
    api: Api = world["api"]
    async with db.engine.begin() as conn:
        key = await create_key(conn, f"soon-revoked-{unique('k')}", "service")
    auth = {"Authorization": f"Bearer {key.token}"}
    body = {"user_id": world["user"], "skill": world["skill"]}
    ok = await api.c.post("/v1/charges", json=body, headers=auth | {"Idempotency-Key": "r1"})
    assert ok.status_code == 201  # the key is now in the worker's cache
    async with db.engine.begin() as conn:
        await revoke_key(conn, key.name)
    before = (await api.c.get(f"/v1/users/{world['user']}", headers=api.keys.auth("admin"))).json()
    cases = [
        ({"json": body}, {}),
        ({"json": body}, {"Idempotency-Key": "r1"}),  # would have been a replay
        ({"json": {"user_id": "a b"}}, {}),  # invalid body
        ({"content": b"{"}, {"Content-Type": "application/json"}),  # malformed JSON
        ({"json": body}, {"Idempotency-Key": "bad key"}),  # invalid header
        ({"content": b"{" + b" " * 70_000}, {"Content-Type": "application/json"}),  # 413
        ({"json": {"user_id": "nobody_here_x", "skill": world["skill"]}}, {}),  # 404 path
    ]
    for kwargs, headers in cases:
        r = await api.c.post("/v1/charges", headers=auth | headers, **kwargs)
        assert (r.status_code, r.json()["code"]) == (401, "unauthorized"), (kwargs, r.text)
    after = (await api.c.get(f"/v1/users/{world['user']}", headers=api.keys.auth("admin"))).json()
    assert after["credits"] == before["credits"]


def test_every_api_route_checks_the_key_first(settings) -> None:
    """The key is checked in the /v1 router's ``before_request`` hook, and Litestar runs
    only the nearest layer's hook: a controller or handler with a hook of its own would
    silently skip authentication. Every /v1 handler must resolve to ``api_request``."""
    from litestar.routes import HTTPRoute

    from skill_credits.app import create_app
    from skill_credits.bodies import api_request

    app = create_app(settings)
    handlers = [
        handler
        for route in app.routes
        if isinstance(route, HTTPRoute) and route.path.startswith("/v1/")
        for handler in route.route_handlers
    ]
    assert len(handlers) >= 20  # the contract's /v1 operations
    for handler in handlers:
        hook = handler.resolve_before_request()
        assert getattr(hook, "func", hook) is api_request, handler.paths
