"""Bad input: a clear 4xx problem+json that names the field, and nothing changes."""

from __future__ import annotations

import base64

import pytest

from skill_credits.ledger.repository import reconcile
from tests.support.api import Api
from tests.support.databases import snapshot

BIG = 2**63
UUID0 = "7b0c5d7e-0000-4000-8000-000000000000"


def cursor_of(raw: str) -> str:
    """A cursor in the API's own form around ``raw`` (its payload is "s<seq>")."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# well-formed cursors whose number no bigint holds, or whose digits are not ASCII
BAD_CURSORS = [
    "czk5OTk5OTk5OTk5OTk5OTk5OTk",
    cursor_of(f"s{2**63}"),
    cursor_of("s\u00b2"),
    cursor_of("s\u0661\u0662"),
]


@pytest.fixture(scope="module")
async def world(api: Api):
    skill = await api.create_skill(cost=5, name="INPUT_TABLE_SKILL")
    user = await api.new_user(100)
    charge = (await api.charge(user, skill["name"])).json()
    return {"api": api, "skill": skill["name"], "user": user, "tx": charge["id"]}


# (method, path, role, json body or raw bytes, headers, status, field mentioned in detail)
CASES = [
    ("POST", "/v1/charges", "service", b'{"user_id": ', {}, 400, "body"),
    ("POST", "/v1/charges", "service", b"[1, 2]", {}, 400, None),
    ("POST", "/v1/charges", "service", b"", {}, 400, None),
    ("POST", "/v1/charges", "service", {"skill": "{skill}"}, {}, 400, "user_id"),
    ("POST", "/v1/charges", "service", {"user_id": "a b", "skill": "{skill}"}, {}, 400, "user_id"),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "u" * 129, "skill": "{skill}"},
        {},
        400,
        "user_id",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}\n", "skill": "{skill}"},
        {},
        400,
        "user_id",
    ),
    ("POST", "/v1/charges", "service", {"user_id": "{user}", "skill": "my tool"}, {}, 400, "skill"),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "units": 0},
        {},
        400,
        "units",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "units": 1_000_001},
        {},
        400,
        "units",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "units": "2"},
        {},
        400,
        "units",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "units": 1.5},
        {},
        400,
        "units",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "units": BIG},
        {},
        400,
        "units",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "units": None},
        {},
        400,
        "units",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "cost": 0},
        {},
        400,
        "cost",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "description": "d" * 501},
        {},
        400,
        "description",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}", "description": "nul\x00"},
        {},
        400,
        "description",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}"},
        {"Idempotency-Key": "k" * 256},
        400,
        "Idempotency-Key",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        {"user_id": "{user}", "skill": "{skill}"},
        {"Idempotency-Key": "has space"},
        400,
        "Idempotency-Key",
    ),
    (
        "POST",
        "/v1/charges",
        "service",
        b'{"user_id": "x", "skill": "' + b"A" * 70_000 + b'"}',
        {},
        413,
        None,
    ),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        {"amount": 0, "type": "GRANT"},
        {},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        {"amount": -5, "type": "PURCHASE"},
        {},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        {"amount": 0, "type": "ADJUSTMENT"},
        {},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        {"amount": 1.5, "type": "GRANT"},
        {},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        {"amount": BIG, "type": "GRANT"},
        {},
        400,
        "amount",
    ),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        {"amount": -BIG, "type": "ADJUSTMENT"},
        {},
        400,
        "amount",
    ),
    ("POST", "/v1/users/{user}/credits", "admin", {"amount": 5, "type": "REFUND"}, {}, 400, "type"),
    ("POST", "/v1/users/{user}/credits", "admin", {"amount": 5}, {}, 400, "type"),
    (
        "POST",
        "/v1/users/bad%20user/credits",
        "admin",
        {"amount": 5, "type": "GRANT"},
        {},
        400,
        "user_id",
    ),
    ("GET", "/v1/users/bad%20user", "service", None, {}, 400, "user_id"),
    ("GET", "/v1/users/{user}/transactions?limit=0", "service", None, {}, 400, "limit"),
    ("GET", "/v1/users/{user}/transactions?limit=201", "service", None, {}, 400, "limit"),
    ("GET", "/v1/users/{user}/transactions?limit=abc", "service", None, {}, 400, "limit"),
    ("GET", "/v1/users/{user}/transactions?cursor=%27%3B--", "service", None, {}, 400, "cursor"),
    (
        "GET",
        "/v1/users/{user}/transactions?cursor=czk5OTk5OTk5OTk5OTk5OTk5OTk5OQ",
        "service",
        None,
        {},
        400,
        "cursor",
    ),
    ("GET", "/v1/users/{user}/transactions?type=FOO", "service", None, {}, 400, "type"),
    ("GET", "/v1/transactions/not-a-uuid", "service", None, {}, 400, "id"),
    ("POST", "/v1/transactions/not-a-uuid/refund", "service", {}, {}, 400, "id"),
    ("POST", "/v1/transactions/{tx}/refund", "service", {"reason": "x"}, {}, 400, "reason"),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "my tool", "display_name": "x", "cost": 1},
        {},
        400,
        "uppercase",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "1ABC", "display_name": "x", "cost": 1},
        {},
        400,
        "name",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "A" * 65, "display_name": "x", "cost": 1},
        {},
        400,
        "name",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "x", "cost": -1},
        {},
        400,
        "cost",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "x", "cost": 2.5},
        {},
        400,
        "cost",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "x", "cost": 1_000_000_001},
        {},
        400,
        "cost",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "", "cost": 1},
        {},
        400,
        "display_name",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "x" * 121, "cost": 1},
        {},
        400,
        "display_name",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "x", "cost": 1, "description": "d" * 2001},
        {},
        400,
        "description",
    ),
    (
        "POST",
        "/v1/admin/skills",
        "admin",
        {"name": "OK_NAME_1", "display_name": "x", "cost": 1, "is_active": "yes"},
        {},
        400,
        "is_active",
    ),
    ("PATCH", "/v1/admin/skills/{skill}", "admin", {}, {}, 400, "body"),
    ("PATCH", "/v1/admin/skills/{skill}", "admin", {"cost": None}, {}, 400, "cost"),
    ("PATCH", "/v1/admin/skills/{skill}", "admin", {"display_name": None}, {}, 400, "display_name"),
    ("PATCH", "/v1/admin/skills/{skill}", "admin", {"cost": 1, "name": "RENAMED"}, {}, 400, "name"),
    ("PATCH", "/v1/admin/skills/bad-name", "admin", {"cost": 1}, {}, 400, "name"),
    ("GET", "/v1/admin/skills/bad-name", "admin", None, {}, 400, "name"),
    ("GET", "/v1/admin/skills/bad-name/history", "admin", None, {}, 400, "name"),
    # bytes that are not UTF-8 inside a string: 400 naming the field
    ("POST", "/v1/charges", "service", b'{"user_id":"\xff","skill":"X"}', {}, 400, "user_id"),
    (
        "POST",
        "/v1/charges",
        "service",
        b'{"user_id": "u1", "skill": "X", "description": "a \\"q\\" \xc3"}',
        {},
        400,
        "description",
    ),
    ("POST", "/v1/holds", "service", b'{"user_id":"u1","skill":"\xed\xa0\x80"}', {}, 400, "skill"),
    (
        "POST",
        "/v1/users/{user}/credits",
        "admin",
        b'{"amount": 5, "type": "GR\xffANT"}',
        {},
        400,
        "type",
    ),
    (
        "POST",
        "/v1/transactions/{tx}/refund",
        "service",
        b'{"description":"\xfe"}',
        {},
        400,
        "description",
    ),
    (
        "PATCH",
        "/v1/admin/skills/{skill}",
        "admin",
        b'{"display_name":"\x80"}',
        {},
        400,
        "display_name",
    ),
    ("POST", "/v1/admin/skills", "admin", b'{"\xff": 1}', {}, 400, "body"),
    *[
        ("GET", f"{route}?cursor={cursor}", "service", None, {}, 400, "cursor")
        for cursor in BAD_CURSORS
        for route in ("/v1/users/{user}/transactions", "/v1/events")
    ],
    # precedence: 401 before 413 and 400; 413 before 400; 400 before 403
    ("POST", "/v1/charges", None, b"{" + b" " * 70_000, {}, 401, None),
    ("POST", "/v1/charges", "revoked", b"{", {}, 401, None),
    ("POST", "/v1/admin/skills", "service", b"{" + b" " * 70_000, {}, 413, None),
    ("POST", "/v1/admin/skills", "service", {"name": "my tool"}, {}, 400, "name"),
    (
        "POST",
        "/v1/users/{user}/credits",
        "service",
        {"amount": "x", "type": "ADJUSTMENT"},
        {},
        400,
        "amount",
    ),
]


def fill(value, world):
    if isinstance(value, str):
        return value.format(**world) if "{" in value and "}" in value else value
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "role", "body", "headers", "status", "field"), CASES)
async def test_bad_input_is_a_4xx_that_changes_nothing(
    world, db, method, path, role, body, headers, status, field
) -> None:
    api: Api = world["api"]
    before = await snapshot(db)
    request_headers = {**api.keys.auth(role), **headers}
    kwargs = {}
    if isinstance(body, bytes):
        kwargs["content"] = body
        request_headers["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = fill(body, world)
    r = await api.c.request(method, fill(path, world), headers=request_headers, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert (
        problem["status"] == status and problem["title"] and problem["detail"] and problem["code"]
    )
    if field:
        assert field in problem["detail"], problem
    assert await snapshot(db) == before
    async with db.autocommit.connect() as conn:
        assert await reconcile(conn) == []
