"""Health, readiness, OpenAPI, a lost database, and the command line."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import asyncpg
import httpx
from litestar.testing import AsyncTestClient

from skill_credits.app import create_app
from skill_credits.settings import Settings
from tests.support.processes import AppServer, free_port
from tests.support.run import run_in_thread


async def test_healthz_readyz(client) -> None:
    assert (await client.get("/healthz")).status_code == 200
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"postgres": "up", "redis": "up"}


async def test_openapi_documents_every_route(client) -> None:
    doc = (await client.get("/schema/openapi.json")).json()
    expected = {
        "/v1/charges": {"post"},
        "/v1/users/{user_id}/credits": {"post"},
        "/v1/users/{user_id}": {"get"},
        "/v1/users/{user_id}/transactions": {"get"},
        "/v1/transactions/{tx_id}": {"get"},
        "/v1/transactions/{tx_id}/refund": {"post"},
        "/v1/skills": {"get"},
        "/v1/admin/skills": {"get", "post"},
        "/v1/admin/skills/{name}": {"get", "patch"},
        "/v1/admin/skills/{name}/history": {"get"},
        "/v1/holds": {"post"},
        "/v1/holds/{hold_id}": {"get"},
        "/v1/holds/{hold_id}/capture": {"post"},
        "/v1/holds/{hold_id}/release": {"post"},
        "/v1/events": {"get"},
        "/v1/users/{user_id}/low-balance-threshold": {"put"},
        "/healthz": {"get"},
        "/readyz": {"get"},
    }
    for path, methods in expected.items():
        assert methods <= set(doc["paths"][path]), path
    charge = doc["paths"]["/v1/charges"]["post"]
    assert "requestBody" in charge
    params = {p["name"] for p in charge.get("parameters", [])}
    assert "Idempotency-Key" in params


async def test_database_unreachable_is_a_quick_503(redis_url, redis_prefix, keys) -> None:
    dead = Settings(
        database_url=f"postgresql://127.0.0.1:{free_port()}/nothing_here",
        redis_url=redis_url,
        redis_prefix=redis_prefix,
    )
    async with AsyncTestClient(app=create_app(dead), timeout=10) as c:
        for method, path in [
            ("GET", "/v1/skills"),
            ("POST", "/v1/charges"),
            ("GET", "/v1/users/someone"),
        ]:
            started = time.monotonic()
            r = await c.request(
                method, path, headers=keys.auth("service"), json={"user_id": "a", "skill": "B"}
            )
            assert time.monotonic() - started < 2
            assert (r.status_code, r.json()["code"]) == (503, "service_unavailable")
        r = await c.get("/readyz")
        assert r.status_code == 503 and r.json()["postgres"] == "down"
        assert (await c.get("/healthz")).status_code == 200


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "skill_credits.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_migrate_keys_serve_and_reconcile(fresh_database, redis_url, redis_prefix) -> None:
    name, url = fresh_database
    env = {"DATABASE_URL": url, "REDIS_URL": redis_url, "REDIS_PREFIX": redis_prefix}
    migrated = run_cli(env, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    assert run_cli(env, "migrate").returncode == 0  # idempotent

    # first start with no admin key: one is made and printed once
    server = AppServer(env, workers=2)
    server.start()
    try:
        printed = server.output()
        assert "No admin key existed" in printed
        assert f"serving on {server.url} (2 workers)" in printed
        bootstrap = printed.split("It is shown once:")[1].split()[0]
        with httpx.Client(base_url=server.url, timeout=10) as http:
            admin = {"Authorization": f"Bearer {bootstrap}"}
            assert http.get("/v1/admin/skills", headers=admin).status_code == 200
            # --workers 2 really runs two worker processes
            assert len(server.worker_pids()) == 2

            created = run_cli(env, "keys", "create", "--role", "service", "--name", "tool-a")
            assert created.returncode == 0, created.stderr
            token = created.stdout.strip().splitlines()[-1]
            service = {"Authorization": f"Bearer {token}"}
            assert http.get("/v1/skills", headers=service).status_code == 200
            assert http.get("/v1/admin/skills", headers=service).status_code == 403
            # stored only as a hash
            rows = asyncio.run(_key_rows(url))
            assert all(token.split("_")[-1].encode() not in bytes(r["key_hash"]) for r in rows)
            assert token not in str(rows)

            _skill_and_credits(http, admin)
            charge = {"user_id": "cli_user", "skill": "CLI_SKILL"}
            for _ in range(4):  # both workers now hold the key in their caches
                assert http.post("/v1/charges", headers=service, json=charge).status_code in (
                    201,
                    402,
                )

            revoked = run_cli(env, "keys", "revoke", "tool-a")
            assert revoked.returncode == 0, revoked.stderr
            # the next request, on whichever worker, is refused
            for _ in range(6):
                assert http.get("/v1/skills", headers=service).status_code == 401
                assert http.post("/v1/charges", headers=service, json=charge).status_code == 401
            assert run_cli(env, "keys", "revoke", "tool-a").returncode == 1

            _skill_and_credits(http, admin)
            assert (
                http.post(
                    "/v1/charges", headers=admin, json={"user_id": "cli_user", "skill": "CLI_SKILL"}
                ).status_code
                == 201
            )
    finally:
        server.stop()

    clean = run_cli(env, "reconcile")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    asyncio.run(_tamper(url))
    broken = run_cli(env, "reconcile")
    assert broken.returncode == 1
    assert "cli_user" in broken.stdout


def _skill_and_credits(http: httpx.Client, admin: dict[str, str]) -> None:
    """CLI_SKILL at cost 2 (made by the first call; later ones are refused, it exists) and
    10 more credits for cli_user."""
    http.post(
        "/v1/admin/skills",
        headers=admin,
        json={"name": "CLI_SKILL", "display_name": "c", "cost": 2},
    )
    http.post("/v1/users/cli_user/credits", headers=admin, json={"amount": 10, "type": "GRANT"})


async def _key_rows(url: str) -> list[dict]:
    conn = await asyncpg.connect(url)
    try:
        return [dict(r) for r in await conn.fetch("SELECT * FROM api_keys")]
    finally:
        await conn.close()


async def _tamper(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE users SET credits = credits + 1 WHERE user_id = 'cli_user'")
    finally:
        await conn.close()


def test_migrations_go_down_and_up_again(fresh_database) -> None:
    """0011 has the partial unique indexes of 0004 under the old constraint names; down to
    0003 gives the full constraints back, and up to head the partial indexes, the
    refund-once one keyed by the user too (0012)."""
    from alembic import command

    from skill_credits.migrate import alembic_config
    from tests.support.databases import at_revision

    _, url = fresh_database
    settings = Settings(database_url=url)

    async def unique_indexes() -> dict[str, str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'transactions'"
                " AND indexname IN ('transactions_idempotency', 'transactions_refund_once')"
            )
            return {r["indexname"]: r["indexdef"].split(" USING btree ", 1)[1] for r in rows}
        finally:
            await conn.close()

    partial = {
        "transactions_idempotency": (
            "(user_id, idempotency_key) WHERE (idempotency_key IS NOT NULL)"
        ),
        "transactions_refund_once": "(refund_of) WHERE (refund_of IS NOT NULL)",
    }
    run_in_thread(at_revision, url, "0011")
    assert run_in_thread(asyncio.run, unique_indexes()) == partial
    run_in_thread(command.downgrade, alembic_config(settings), "0003")
    assert run_in_thread(asyncio.run, unique_indexes()) == {
        "transactions_idempotency": "(user_id, idempotency_key)",
        "transactions_refund_once": "(refund_of)",
    }
    run_in_thread(command.upgrade, alembic_config(settings), "head")
    assert run_in_thread(asyncio.run, unique_indexes()) == {
        **partial,
        "transactions_refund_once": "(refund_of, user_id) WHERE (refund_of IS NOT NULL)",
    }


async def _create_empty_database(pg_base: str, name: str) -> None:
    conn = await asyncpg.connect(f"{pg_base}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


def test_cli_answers_expected_failures_in_one_line(
    fresh_database, pg_base, database_url, run_id
) -> None:
    """No traceback for what a newcomer will meet: one line on stderr, exit 1."""
    name, missing = fresh_database
    nobody = f"postgresql://127.0.0.1:{free_port()}/skill_credits"
    taken = f"taken-{run_id}"
    create = ["keys", "create", "--role", "service", "--name"]
    assert run_cli({"DATABASE_URL": database_url}, *create, taken).returncode == 0
    cases = [
        (missing, [*create, "a"], f"database {name!r} does not exist: run `skill-credits migrate`"),
        (missing, ["reconcile"], "run `skill-credits migrate`"),
        (missing, ["serve", "--port", str(free_port())], "run `skill-credits migrate`"),
        (nobody, ["migrate"], "PostgreSQL at 127.0.0.1:"),
        (nobody, [*create, "a"], "is not answering"),
        (nobody, ["serve", "--port", str(free_port())], "is not answering"),
        (database_url, [*create, taken], f"a live key named {taken!r} exists"),
        (database_url, [*create, "x" * 101], "1-100 characters"),
    ]
    for url, args, expected in cases:
        done = run_cli({"DATABASE_URL": url}, *args)
        said = done.stderr.strip()
        assert (done.returncode, "\n" in said) == (1, False), (args, done.stderr)
        assert said.startswith("skill-credits: ") and expected in said, (args, said)

    # a database that exists but was never migrated
    run_in_thread(asyncio.run, _create_empty_database(pg_base, name))
    done = run_cli({"DATABASE_URL": missing}, "keys", "revoke", "a")
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"skill-credits: database {name!r} has no schema yet: run `skill-credits migrate`"
    )
