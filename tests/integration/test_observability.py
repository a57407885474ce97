"""/metrics, X-Request-ID, JSON logs without secrets, and the login brute-force guard."""

from __future__ import annotations

import json
import re

import httpx

from tests.support.api import Api
from tests.support.processes import AppServer, free_port
from tests.support.run import unique


def sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_metrics_count_requests_charges_credits_and_cache(api: Api, client) -> None:
    skill = await api.create_skill(cost=4)
    user = await api.new_user(10)
    before = (await client.get("/metrics")).text
    assert (await api.charge(user, skill["name"])).status_code == 201
    assert (await api.charge(user, skill["name"], key="m1")).status_code == 201
    assert (await api.charge(user, skill["name"], key="m1")).status_code == 201  # replayed
    assert (await api.charge(user, skill["name"])).status_code == 402
    assert (await api.charge(user, "NEVER_HEARD_OF")).status_code == 404
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = r.text
    name = skill["name"]

    def delta(metric: str, **labels: str) -> float:
        return sample(after, metric, **labels) - sample(before, metric, **labels)

    assert delta("skill_credits_charges_total", skill=name, outcome="charged") == 2
    assert delta("skill_credits_charges_total", skill=name, outcome="replayed") == 1
    assert delta("skill_credits_charges_total", skill=name, outcome="insufficient_credits") == 1
    assert delta("skill_credits_charges_total", skill="(unknown)", outcome="skill_not_found") == 1
    assert "NEVER_HEARD_OF" not in after
    assert delta("skill_credits_credits_consumed_total", skill=name) == 8
    assert delta("skill_credits_skill_cache_lookups_total", result="hit") >= 3
    # requests by route template (not the raw path) and status, with latency
    assert (
        delta(
            "skill_credits_http_requests_total",
            path="/v1/charges",
            status_code="201",
            method="POST",
        )
        == 3
    )
    assert (
        delta(
            "skill_credits_http_requests_total",
            path="/v1/charges",
            status_code="402",
            method="POST",
        )
        == 1
    )
    assert (
        sample(
            after,
            "skill_credits_http_request_duration_seconds_count",
            path="/v1/charges",
            method="POST",
        )
        >= 5
    )
    assert f"/v1/users/{user}" not in after


async def test_charges_total_counts_every_refusal(api: Api, client, keys) -> None:
    """Also the refusals that never reach the charge handler: 400 body, 401, 413, 415."""
    skill = await api.create_skill(cost=1, is_active=False)
    user = await api.new_user(10)
    before = (await client.get("/metrics")).text
    service = keys.auth("service")
    refusals = [
        ({"json": {"user_id": user, "skill": "lower case"}, "headers": service}, 400),
        (
            {"json": {"user_id": user, "skill": skill["name"], "units": "2"}, "headers": service},
            400,
        ),
        ({"json": {"user_id": user, "skill": skill["name"]}}, 401),
        ({"json": {"user_id": user, "skill": skill["name"]}, "headers": keys.auth("revoked")}, 401),
        ({"content": b"x" * 70_000, "headers": service}, 413),
        ({"content": b"{}", "headers": {**service, "Content-Type": "text/plain"}}, 415),
        ({"json": {"user_id": user, "skill": skill["name"]}, "headers": service}, 403),
    ]
    for kwargs, status in refusals:
        assert (await client.post("/v1/charges", **kwargs)).status_code == status
    after = (await client.get("/metrics")).text

    def delta(**labels: str) -> float:
        name = "skill_credits_charges_total"
        return sample(after, name, **labels) - sample(before, name, **labels)

    unknown = "(unknown)"
    assert delta(skill=unknown, outcome="validation_error") == 2
    assert delta(skill=unknown, outcome="unauthorized") == 2
    assert delta(skill=unknown, outcome="payload_too_large") == 1
    assert delta(skill=unknown, outcome="unsupported_media_type") == 1
    assert delta(skill=skill["name"], outcome="skill_disabled") == 1
    assert delta() == len(refusals)
    # a request in progress has no status yet, and the gauge says none
    gauge = [
        line
        for line in after.splitlines()
        if line.startswith("skill_credits_http_requests_in_progress{")
    ]
    assert gauge and not [line for line in gauge if "status_code" in line], gauge


async def test_request_id_is_echoed_or_made(client) -> None:
    r = await client.get("/healthz", headers={"X-Request-ID": "trace-abc.123"})
    assert r.headers["x-request-id"] == "trace-abc.123"
    made = (await client.get("/healthz", headers={"X-Request-ID": "bad id;drop"})).headers
    assert re.fullmatch(r"[0-9a-f]{32}", made["x-request-id"])
    problem = await client.get("/v1/skills")
    assert problem.status_code == 401 and problem.headers["x-request-id"]


def test_logs_are_json_with_the_request_id_and_no_secrets(server_env, keys) -> None:
    """A Redis that is down makes the service log a warning while serving a charge."""
    env = server_env | {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "LOG_LEVEL": "info"}
    server = AppServer(env)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            admin = keys.auth("admin")
            skill = unique("LOGGED")
            http.post(
                "/v1/admin/skills",
                headers=admin,
                json={"name": skill, "display_name": "l", "cost": 1},
            )
            user = unique("log").lower()
            http.post(
                f"/v1/users/{user}/credits", headers=admin, json={"amount": 5, "type": "GRANT"}
            )
            r = http.post(
                "/v1/charges",
                json={"user_id": user, "skill": skill},
                headers=keys.auth("service") | {"X-Request-ID": "req-log-42"},
            )
            assert r.status_code == 201, r.text
            http.get("/v1/skills", headers={"Authorization": f"Bearer {keys.service}x"})
    finally:
        server.stop()
    lines = [json.loads(x) for x in server.output().splitlines() if x.startswith("{")]
    assert lines, server.output()
    assert {"time", "level", "logger", "message", "request_id"} <= set(lines[0])
    mine = [x for x in lines if x["request_id"] == "req-log-42"]
    assert any(
        x["logger"] == "skill_credits.access" and "/v1/charges 201" in x["message"] for x in mine
    ), mine
    # the Redis warning logged while serving a request says which request
    warnings = [x for x in lines if x["logger"] == "skill_credits.skills.cache"]
    assert any(re.fullmatch(r"[0-9a-f]{32}|req-log-42", x["request_id"]) for x in warnings), (
        warnings
    )
    assert all(x["logger"] != "uvicorn.access" for x in lines)  # one access line: ours
    output = server.output()
    for secret in (keys.service, keys.admin, keys.service.split("_")[-1]):
        assert secret not in output


async def test_login_is_rate_limited_per_client(client) -> None:
    codes = []
    for _ in range(12):
        r = await client.post(
            "/admin/login",
            data={"api_key": "sck_guess_guess"},
            headers={"X-Forwarded-For": "irrelevant"},
        )
        codes.append(r.status_code)
    # CSRF refuses these tokenless posts (403) until the limit answers 429 first
    assert 429 in codes and codes.index(429) >= 10, codes
    assert r.status_code == 429 and r.headers["content-type"].startswith("application/problem+json")
    problem = r.json()
    assert (problem["status"], problem["code"], problem["title"]) == (
        429,
        "rate_limited",
        "Too many requests",
    )
    assert 1 <= int(r.headers["Retry-After"]) <= 60, r.headers
