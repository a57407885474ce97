"""The example host app bills its tool routes through a real skill-credits server."""

from __future__ import annotations

import httpx
import pytest
from examples.ai_tool_app import create_app
from litestar.testing import AsyncTestClient

from tests.support.processes import AppServer
from tests.support.run import unique


@pytest.fixture(scope="module")
def billing_server(server_env):
    with AppServer(server_env, workers=1) as server:
        yield server


@pytest.fixture
async def setup(billing_server, keys):
    """Fresh skills SUMMARIZE_x / TRANSCRIBE_x are wired by name into the example's routes."""
    async with httpx.AsyncClient(base_url=billing_server.url, timeout=10) as http:
        admin = keys.auth("admin")
        for name, cost in [("SUMMARIZE", 5), ("TRANSCRIBE", 2)]:
            r = await http.post(
                "/v1/admin/skills",
                headers=admin,
                json={"name": name, "display_name": name.title(), "cost": cost},
            )
            assert r.status_code in (201, 409), r.text
            await http.patch(
                f"/v1/admin/skills/{name}", headers=admin, json={"cost": cost, "is_active": True}
            )
        user = unique("host").lower()
        await http.post(
            f"/v1/users/{user}/credits", headers=admin, json={"amount": 200, "type": "GRANT"}
        )
        app = create_app(billing_server.url, keys.service)
        async with AsyncTestClient(app=app) as tool:
            yield {"tool": tool, "http": http, "user": user, "admin": admin}


async def balance(setup) -> dict:
    r = await setup["http"].get(f"/v1/users/{setup['user']}", headers=setup["admin"])
    return r.json()


async def test_route_charges_before_running(setup) -> None:
    r = await setup["tool"].post(
        "/tools/summarize", json={"text": "a long article"}, headers={"X-User-Id": setup["user"]}
    )
    assert r.status_code == 201, r.text
    assert r.json()["credits_charged"] == 5 and r.json()["balance_after"] == 195
    assert (await balance(setup))["credits"] == 195


async def test_route_refunds_when_the_tool_raises(setup) -> None:
    r = await setup["tool"].post(
        "/tools/summarize", json={"text": "please fail"}, headers={"X-User-Id": setup["user"]}
    )
    assert r.status_code == 502
    assert (await balance(setup))["credits"] == 200
    log = (
        await setup["http"].get(f"/v1/users/{setup['user']}/transactions", headers=setup["admin"])
    ).json()["items"]
    assert [t["type"] for t in log[:2]] == ["REFUND", "CONSUMPTION"]
    assert log[0]["refund_of"] == log[1]["id"]


async def test_refusals_are_the_apis_problem_details(setup) -> None:
    tool, user = setup["tool"], setup["user"]
    r = await tool.post(
        "/tools/summarize", json={"text": "x"}, headers={"X-User-Id": "no_such_user"}
    )
    assert (r.status_code, r.json()["code"]) == (404, "user_not_found")
    assert r.headers["content-type"].startswith("application/problem+json")
    await setup["http"].patch(
        "/v1/admin/skills/SUMMARIZE", headers=setup["admin"], json={"is_active": False}
    )
    r = await tool.post("/tools/summarize", json={"text": "x"}, headers={"X-User-Id": user})
    assert (r.status_code, r.json()["code"]) == (403, "skill_disabled")
    await setup["http"].patch(
        "/v1/admin/skills/SUMMARIZE", headers=setup["admin"], json={"is_active": True, "cost": 1000}
    )
    r = await tool.post("/tools/summarize", json={"text": "x"}, headers={"X-User-Id": user})
    assert (r.status_code, r.json()["code"], r.json()["required"]) == (
        402,
        "insufficient_credits",
        1000,
    )
    assert (await balance(setup))["credits"] == 200


async def test_hold_captures_the_units_used_and_releases_on_failure(setup) -> None:
    tool, user = setup["tool"], setup["user"]
    r = await tool.post("/tools/transcribe", json={"audio": "x" * 95}, headers={"X-User-Id": user})
    assert r.status_code == 201 and r.json()["seconds_billed"] == 10
    view = await balance(setup)
    assert (view["credits"], view["reserved"]) == (200 - 2 * 10, 0)
    r = await tool.post(
        "/tools/transcribe", json={"audio": "x", "fail": True}, headers={"X-User-Id": user}
    )
    assert r.status_code == 502
    view = await balance(setup)
    assert (view["credits"], view["reserved"], view["available"]) == (180, 0, 180)


async def test_retries_with_the_same_idempotency_key_charge_once(setup) -> None:
    headers = {"X-User-Id": setup["user"], "Idempotency-Key": unique("req")}
    first = await setup["tool"].post("/tools/summarize", json={"text": "t"}, headers=headers)
    second = await setup["tool"].post("/tools/summarize", json={"text": "t"}, headers=headers)
    assert first.status_code == second.status_code == 201
    assert (await balance(setup))["credits"] == 195


async def test_a_members_limit_reaches_the_hosts_client_as_a_429(setup) -> None:
    """The member comes from the host request; a 429 comes back with its Retry-After."""
    http, tool, user = setup["http"], setup["tool"], setup["user"]
    r = await http.post(
        f"/v1/users/{user}/limits",
        headers=setup["admin"],
        json={"window": "hour", "max_credits": 5, "member": "agent_7"},
    )
    assert r.status_code == 201, r.text
    as_agent = {"X-User-Id": user, "X-Member": "agent_7"}
    r = await tool.post("/tools/summarize", json={"text": "t"}, headers=as_agent)
    assert r.status_code == 201, r.text
    r = await tool.post("/tools/summarize", json={"text": "t"}, headers=as_agent)
    assert (r.status_code, r.json()["code"], r.json()["required"]) == (
        429,
        "spend_limit_exceeded",
        5,
    )
    assert r.json()["limit"]["member"] == "agent_7"
    assert 1 <= int(r.headers["Retry-After"]) <= 3600
    assert r.headers["content-type"].startswith("application/problem+json")
    # another member is not stopped by agent_7's limit
    r = await tool.post(
        "/tools/summarize", json={"text": "t"}, headers={"X-User-Id": user, "X-Member": "ann"}
    )
    assert r.status_code == 201, r.text
    log = (
        await http.get(
            f"/v1/users/{user}/transactions", params={"member": "agent_7"}, headers=setup["admin"]
        )
    ).json()["items"]
    assert [(t["type"], t["member"]) for t in log] == [("CONSUMPTION", "agent_7")]
