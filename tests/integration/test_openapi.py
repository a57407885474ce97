"""/schema/openapi.json tells the truth: every status an operation answers, every error as
application/problem+json, the rules of names, ids and keys; and a client generated from it
(openapi-python-client) works against a real server, a 402 included.

schemathesis' conformance checks over every operation are in test_fuzz.py.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import uuid

import httpx
import pytest

from tests.support.processes import AppServer
from tests.support.run import unique

OPERATION_IDS = {
    "createLimit",
    "listLimits",
    "changeLimit",
    "deleteLimit",
    "createCharge",
    "addCredits",
    "getUser",
    "listTransactions",
    "listGrants",
    "getTransaction",
    "refundTransaction",
    "createHold",
    "getHold",
    "captureHold",
    "releaseHold",
    "listCatalogue",
    "listSkills",
    "createSkill",
    "getSkill",
    "updateSkill",
    "getSkillHistory",
    "listEvents",
    "setLowBalanceThreshold",
    "getUsage",
    "getForecast",
    "setAutoRecharge",
    "getAutoRecharge",
    "deleteAutoRecharge",
    "listRecharges",
    "getRecharge",
    "fulfilRecharge",
    "failRecharge",
    "getHealth",
    "getReadiness",
    "getMetrics",
}
WRITES_WITH_KEY = {"createCharge", "addCredits", "refundTransaction", "createHold", "captureHold"}
PROBLEMS = {"Problem", "InsufficientCredits", "VersionConflict"}


@pytest.fixture(scope="module")
async def document(client) -> dict:
    r = await client.get("/schema/openapi.json")
    assert r.status_code == 200
    return r.json()


def operations(document: dict) -> dict[str, tuple[str, str, dict]]:
    return {
        op["operationId"]: (method.upper(), path, op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    }


def statuses(op: dict) -> set[int]:
    return {int(status) for status in op["responses"]}


def test_short_stable_operation_ids(document) -> None:
    assert set(operations(document)) == OPERATION_IDS


def test_every_error_is_one_shared_problem_schema(document) -> None:
    for name, (_, path, op) in operations(document).items():
        for status, response in op["responses"].items():
            if int(status) < 400 or not path.startswith("/v1/"):
                continue
            (media_type, content), *others = response["content"].items()
            assert (media_type, others) == ("application/problem+json", []), (name, status)
            ref = content["schema"]["$ref"].rsplit("/", 1)[-1]
            expected = {
                "402": "InsufficientCredits",
                "412": "VersionConflict",
                "429": "SpendLimitExceeded",
            }.get(status)
            assert ref == (expected or "Problem"), (name, status, ref)
    assert "status_code" not in json.dumps(document), "Litestar's default 400 is still there"
    schemas = document["components"]["schemas"]
    assert set(schemas["Problem"]["required"]) == {"status", "title", "detail", "code"}
    assert {"credits", "available", "required"} <= set(schemas["InsufficientCredits"]["required"])
    assert "current_version" in schemas["VersionConflict"]["required"]
    assert {"limit", "required"} <= set(schemas["SpendLimitExceeded"]["required"])


def test_every_operation_lists_the_statuses_its_code_paths_answer(document) -> None:
    ops = operations(document)
    for name, (_, path, op) in ops.items():
        if path.startswith("/v1/"):
            assert {401, 503} <= statuses(op), name  # the key is read from PostgreSQL
            if "requestBody" in op:
                assert {400, 413, 415} <= statuses(op), name
            if op.get("parameters"):
                assert 400 in statuses(op), name
    for name in ("createCharge", "createHold", "addCredits"):
        assert {402, 403, 404, 422} <= statuses(ops[name][2]), name
    for name in ("listSkills", "createSkill", "getSkill", "updateSkill", "getSkillHistory"):
        assert 403 in statuses(ops[name][2]), name  # a service key
    for name in ("refundTransaction", "captureHold", "releaseHold", "createSkill", "createLimit"):
        assert 409 in statuses(ops[name][2]), name
    for name in ("createCharge", "createHold"):
        assert "Retry-After" in ops[name][2]["responses"]["429"]["headers"], name
    updated = ops["updateSkill"][2]["responses"]
    assert 412 in statuses(ops["updateSkill"][2]) and "ETag" in updated["412"]["headers"]
    assert "Retry-After" in ops["createCharge"][2]["responses"]["503"]["headers"]
    assert "WWW-Authenticate" in ops["getUser"][2]["responses"]["401"]["headers"]
    assert "Idempotent-Replayed" in ops["createCharge"][2]["responses"]["201"]["headers"]
    assert statuses(ops["getReadiness"][2]) == {200, 503}
    assert list(ops["getMetrics"][2]["responses"]["200"]["content"]) == ["text/plain"]


async def test_each_operation_answers_401_as_documented(client, document) -> None:
    """No key: every /v1 operation answers the documented 401 problem."""
    for name, (method, path, op) in operations(document).items():
        if not path.startswith("/v1/"):
            continue
        url = path.format(
            user_id="u1",
            tx_id=uuid.uuid4(),
            hold_id=uuid.uuid4(),
            limit_id=uuid.uuid4(),
            recharge_id=uuid.uuid4(),
            name="S",
        )
        r = await client.request(method, url)
        assert r.status_code == 401 and "401" in op["responses"], name
        assert r.headers["content-type"] == "application/problem+json", name
        assert r.json()["code"] == "unauthorized"


def test_idempotency_key_names_ids_and_costs_carry_their_rules(document) -> None:
    ops = operations(document)
    for name in WRITES_WITH_KEY:
        (header,) = [p for p in ops[name][2]["parameters"] if p["in"] == "header"]
        assert header["name"] == "Idempotency-Key" and header["required"] is False
        schema = {k: v for k, v in header["schema"].items() if k != "description"}
        assert schema == {
            "type": "string",
            "minLength": 1,
            "maxLength": 255,
            "pattern": "^[\\x21-\\x7e]{1,255}$",
        }, name
    user_id = "^[A-Za-z0-9._:@-]{1,128}$"
    skill_name = "^[A-Z][A-Z0-9_]{0,63}$"
    schemas = document["components"]["schemas"]
    for struct in ("ChargeIn", "HoldIn"):
        assert schemas[struct]["properties"]["user_id"]["pattern"] == user_id
        assert schemas[struct]["properties"]["skill"]["pattern"] == skill_name
    assert schemas["SkillCreate"]["properties"]["name"]["pattern"] == skill_name
    for struct in ("SkillCreate", "SkillPatch"):
        cost = schemas[struct]["properties"]["cost"]
        assert (cost["minimum"], cost["maximum"]) == (0, 1_000_000_000), struct
    amount = schemas["CreditIn"]["properties"]["amount"]
    assert (amount["minimum"], amount["maximum"]) == (-(2**63 - 1), 2**63 - 1)
    for struct in ("Transaction", "Hold", "Skill", "Event"):
        assert schemas[struct]["properties"]["id"]["format"] == "uuid", struct

    def path_param(op_name: str, param: str) -> dict:
        (found,) = [p for p in ops[op_name][2]["parameters"] if p["name"] == param]
        return found["schema"]

    assert path_param("getUser", "user_id")["pattern"] == user_id
    assert path_param("getSkill", "name")["pattern"] == skill_name
    assert path_param("getTransaction", "tx_id")["format"] == "uuid"
    assert path_param("getHold", "hold_id")["format"] == "uuid"


# --- a client generated from the served document, against a real server -------------------


@pytest.fixture(scope="module")
def live_server(server_env):
    with AppServer(server_env, workers=1) as server:
        yield server


@pytest.fixture(scope="module")
def generated(live_server, tmp_path_factory):
    """``openapi-python-client generate`` over /schema/openapi.json, imported as a package."""
    root = tmp_path_factory.mktemp("generated")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(f"{live_server.url}/schema/openapi.json").content)
    config = root / "config.json"
    config.write_text(json.dumps({"post_hooks": []}))  # no ruff run on the output
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "openapi_python_client",
            "generate",
            "--path",
            str(spec),
            "--output-path",
            str(root / "sc_generated"),
            "--meta",
            "none",
            "--config",
            str(config),
            "--fail-on-warning",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("sc_generated")
    finally:
        sys.path.remove(str(root))
        for module in [m for m in sys.modules if m.split(".")[0] == "sc_generated"]:
            del sys.modules[module]


def test_a_generated_client_charges_replays_and_reads_a_402(live_server, keys, generated):
    models = importlib.import_module("sc_generated.models")

    def operation(tag: str, name: str):
        return importlib.import_module(f"sc_generated.api.{tag}.{name}")

    create_skill, add_credits = (
        operation("admin", "create_skill"),
        operation("ledger", "add_credits"),
    )
    create_charge, get_user = operation("ledger", "create_charge"), operation("ledger", "get_user")

    def client(role: str):
        token = keys.auth(role)["Authorization"].split(" ", 1)[1]
        return generated.AuthenticatedClient(
            base_url=live_server.url, token=token, raise_on_unexpected_status=True
        )

    admin, service = client("admin"), client("service")
    skill = unique("GEN")
    created = create_skill.sync_detailed(
        client=admin, body=models.SkillCreate(name=skill, display_name="Generated", cost=7)
    )
    assert created.status_code == 201 and isinstance(created.parsed, models.Skill)
    user = unique("gen").lower()
    credited = add_credits.sync(
        client=admin,
        user_id=user,
        body=models.CreditIn(amount=10, type_=models.CreditInType.GRANT),
    )
    assert isinstance(credited, models.Transaction) and credited.balance_after == 10

    body = models.ChargeIn(user_id=user, skill=skill)
    key = f"gen-{uuid.uuid4()}"
    first = create_charge.sync_detailed(client=service, body=body, idempotency_key=key)
    again = create_charge.sync_detailed(client=service, body=body, idempotency_key=key)
    assert first.status_code == again.status_code == 201
    assert isinstance(first.parsed, models.Transaction)
    assert again.parsed.id == first.parsed.id and again.parsed.amount == -7
    assert again.headers["Idempotent-Replayed"] == "true"
    balance = get_user.sync(client=service, user_id=user)
    assert (
        isinstance(balance, models.User) and balance.credits_ == 3
    )  # one deduction (`credits` is a builtin name)

    refused = create_charge.sync_detailed(client=service, body=body)
    assert refused.status_code == 402
    problem = refused.parsed
    assert isinstance(problem, models.InsufficientCredits)
    assert problem.code == "insufficient_credits"
    assert (problem.status, problem.credits_, problem.available, problem.required) == (402, 3, 3, 7)

    missing = get_user.sync(client=service, user_id=unique("nobody").lower())
    assert isinstance(missing, models.Problem) and missing.code == "user_not_found"
