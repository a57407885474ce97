"""Hostile input: schemathesis over every documented route, and targeted cases.

Zero 5xx and zero answers the document does not describe (status, content type, headers,
body: schemathesis' conformance checks); every refusal is a
problem+json 4xx; nothing the fuzzer sends may break the ledger (reconcile stays clean).
"""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from skill_credits.ledger.repository import reconcile
from tests.conftest import unique
from tests.support import AppServer, record


@pytest.fixture(scope="module")
def fuzz_server(server_env):
    server = AppServer(server_env, workers=1)
    server.start()
    yield server
    server.stop()


def test_no_5xx_and_every_answer_matches_the_schema(fuzz_server, keys) -> None:
    """Every operation of /schema/openapi.json, with valid and with invalid generated
    input (schemathesis' positive and negative modes), as admin and as service: each
    answer's status, content type, headers and body are ones the document lists."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/schema/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    calls = 0

    for operation in operations:
        strategy = operation.as_strategy(schemathesis.GenerationMode.POSITIVE) | (
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE)
        )

        @given(case=strategy)
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def fuzz(case) -> None:
            nonlocal calls
            for role in ("admin", "service"):
                calls += 1
                case.call_and_validate(
                    headers=keys.auth(role),
                    checks=[
                        not_a_server_error,
                        status_code_conformance,
                        content_type_conformance,
                        response_headers_conformance,
                        response_schema_conformance,
                    ],
                )

        fuzz()
    assert calls >= 20 * len(operations)
    record("schemathesis", {"operations": len(operations), "requests": calls})


@pytest.fixture(scope="module")
def fuzz_http(fuzz_server):
    with httpx.Client(base_url=fuzz_server.url, timeout=20) as c:
        yield c


def state(http: httpx.Client, keys, user: str, skill: str) -> tuple:
    u = http.get(f"/v1/users/{user}", headers=keys.auth("admin")).json()
    s = http.get(f"/v1/admin/skills/{skill}", headers=keys.auth("admin")).json()
    return u["credits"], s["cost"], s["version"]


BIG = 2**63
SQL = "'; DROP TABLE users; --"
HOSTILE = [
    # (method, path, body (bytes or json), content type)
    ("POST", "/v1/charges", {"user_id": "{user}", "skill": "{skill}", "units": BIG}, None),
    ("POST", "/v1/charges", {"user_id": "{user}", "skill": "{skill}", "units": -BIG}, None),
    ("POST", "/v1/charges", {"user_id": "{user}", "skill": "{skill}", "units": 1e308}, None),
    ("POST", "/v1/charges", {"user_id": SQL, "skill": "{skill}"}, None),
    ("POST", "/v1/charges", {"user_id": "{user}", "skill": SQL}, None),
    ("POST", "/v1/charges", {"user_id": "{user}\u0000", "skill": "{skill}"}, None),
    ("POST", "/v1/charges", {"user_id": "ユーザー", "skill": "{skill}"}, None),
    (
        "POST",
        "/v1/charges",
        {"user_id": "{user}", "skill": "{skill}", "description": "a\x07b"},
        None,
    ),
    (
        "POST",
        "/v1/charges",
        b'{"user_id": "{user}", "skill": "{skill}", "units": 1, "units": 999999999}',
        None,
    ),
    ("POST", "/v1/charges", b'{"user_id": "{user}", "skill": "{skill}"}', "text/plain"),
    ("POST", "/v1/charges", b"user_id={user}&skill={skill}", "application/x-www-form-urlencoded"),
    ("POST", "/v1/charges", b'{"user_id": "' + b"x" * 1_000_000 + b'"}', None),
    ("POST", "/v1/charges", b"\xff\xfe\x00garbage", None),
    ("POST", "/v1/charges", b"[]", None),
    ("POST", "/v1/charges", b"null", None),
    ("POST", "/v1/users/{user}/credits", {"amount": BIG, "type": "GRANT"}, None),
    ("POST", "/v1/users/{user}/credits", {"amount": 1.5, "type": "GRANT"}, None),
    ("POST", "/v1/users/{user}/credits", {"amount": "1e3", "type": "GRANT"}, None),
    ("POST", "/v1/users/{user}/credits", {"amount": 5, "type": SQL}, None),
    ("POST", "/v1/admin/skills", {"name": "NEW_SKILL_X", "display_name": "x", "cost": -1}, None),
    ("POST", "/v1/admin/skills", {"name": "NEW_SKILL_X", "display_name": "x", "cost": 2.5}, None),
    ("POST", "/v1/admin/skills", {"name": "NEW_SKILL_X", "display_name": "x", "cost": BIG}, None),
    ("POST", "/v1/admin/skills", {"name": "ÄÖÜ", "display_name": "x", "cost": 1}, None),
    ("POST", "/v1/admin/skills", {"name": "NEW\nSKILL", "display_name": "x", "cost": 1}, None),
    ("POST", "/v1/admin/skills", {"name": SQL, "display_name": "x", "cost": 1}, None),
    ("PATCH", "/v1/admin/skills/{skill}", {"cost": -5}, None),
    ("PATCH", "/v1/admin/skills/{skill}", {"cost": 1.25}, None),
    ("PATCH", "/v1/admin/skills/{skill}", {"display_name": "ok\u0000"}, None),
    ("PATCH", "/v1/admin/skills/{skill}", b'{"cost": 1, "cost": "x"}', None),
    ("GET", f"/v1/users/{SQL}", None, None),
    ("GET", "/v1/users/{user}/transactions?limit=9223372036854775808", None, None),
    ("GET", "/v1/users/{user}/transactions?cursor=" + "A" * 64, None, None),
    ("GET", "/v1/transactions/%00", None, None),
    ("POST", "/v1/holds", {"user_id": "{user}", "skill": "{skill}", "ttl_seconds": BIG}, None),
]


@pytest.mark.parametrize(("method", "path", "body", "content_type"), HOSTILE)
def test_hostile_input_is_a_4xx_that_changes_nothing(
    fuzz_http, keys, database_url, method, path, body, content_type
) -> None:
    user, skill = hostile_world(fuzz_http, keys)
    before = state(fuzz_http, keys, user, skill)

    def fill(value):
        if isinstance(value, str):
            return value.replace("{user}", user).replace("{skill}", skill)
        if isinstance(value, bytes):
            return value.replace(b"{user}", user.encode()).replace(b"{skill}", skill.encode())
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        return value

    headers = keys.auth("admin") | {"Content-Type": content_type or "application/json"}
    content = (
        fill(body)
        if isinstance(body, bytes)
        else (json.dumps(fill(body)).encode() if body is not None else None)
    )
    r = fuzz_http.request(method, fill(path), content=content, headers=headers)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    if content_type not in (None, "application/json"):
        assert (r.status_code, r.json()["code"]) == (415, "unsupported_media_type")
    assert r.headers["content-type"].startswith("application/problem+json"), r.text[:300]
    assert r.json()["code"] and r.json()["detail"]
    assert state(fuzz_http, keys, user, skill) == before


_world: dict = {}


def hostile_world(http: httpx.Client, keys) -> tuple[str, str]:
    if not _world:
        admin = keys.auth("admin")
        skill = unique("HOSTILE")
        assert (
            http.post(
                "/v1/admin/skills",
                headers=admin,
                json={"name": skill, "display_name": "h", "cost": 3},
            ).status_code
            == 201
        )
        user = unique("hostile").lower()
        assert (
            http.post(
                f"/v1/users/{user}/credits", headers=admin, json={"amount": 100, "type": "GRANT"}
            ).status_code
            == 201
        )
        _world.update(user=user, skill=skill)
    return _world["user"], _world["skill"]


def test_unicode_text_round_trips_exactly(fuzz_http, keys) -> None:
    user, skill = hostile_world(fuzz_http, keys)
    text = 'Résumé 🚀 — 日本語 "quotes" <b>tags</b> \t tab\nnewline'
    r = fuzz_http.post(
        "/v1/charges",
        headers=keys.auth("service"),
        json={"user_id": user, "skill": skill, "description": text},
    )
    assert r.status_code == 201 and r.json()["description"] == text
    got = fuzz_http.get(f"/v1/transactions/{r.json()['id']}", headers=keys.auth("service"))
    assert got.json()["description"] == text


async def test_the_ledger_survived_the_fuzzing(db) -> None:
    async with db.autocommit.connect() as conn:
        assert await reconcile(conn) == []
