"""Small request helpers shared by the integration tests."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from tests.conftest import Keys, unique


class Api:
    """Thin wrapper over an httpx-style async client with the run's keys."""

    def __init__(self, client: Any, keys: Keys) -> None:
        self.c = client
        self.keys = keys

    async def create_skill(self, cost: int, name: str | None = None, **extra: Any) -> dict:
        name = name or unique("SK")
        r = await self.c.post(
            "/v1/admin/skills",
            json={"name": name, "display_name": name.title(), "cost": cost, **extra},
            headers=self.keys.auth("admin"),
        )
        assert r.status_code == 201, r.text
        return r.json()

    async def patch_skill(self, name: str, **changes: Any) -> dict:
        r = await self.c.patch(
            f"/v1/admin/skills/{name}", json=changes, headers=self.keys.auth("admin")
        )
        assert r.status_code == 200, r.text
        return r.json()

    async def new_user(self, credits: int) -> str:
        user = unique("user").lower()
        if credits:
            await self.credit(user, credits)
        return user

    async def credit(self, user: str, amount: int, type_: str = "GRANT") -> dict:
        r = await self.c.post(
            f"/v1/users/{user}/credits",
            json={"amount": amount, "type": type_},
            headers=self.keys.auth("admin"),
        )
        assert r.status_code == 201, r.text
        return r.json()

    async def charge(self, user: str, skill: str, *, key: str | None = None, **body: Any):
        headers = self.keys.auth("service")
        if key is not None:
            headers["Idempotency-Key"] = key
        return await self.c.post(
            "/v1/charges", json={"user_id": user, "skill": skill, **body}, headers=headers
        )

    async def balance(self, user: str) -> int:
        r = await self.c.get(f"/v1/users/{user}", headers=self.keys.auth("service"))
        assert r.status_code == 200, r.text
        return r.json()["credits"]


async def snapshot(db) -> tuple:
    """What a refused request must leave unchanged: rows, balances, skills and versions."""
    async with db.autocommit.connect() as conn:
        row = (
            await conn.execute(
                text(
                    "SELECT (SELECT count(*) FROM transactions), (SELECT sum(credits) FROM users),"
                    " (SELECT count(*) FROM skills), (SELECT sum(version) FROM skills)"
                )
            )
        ).one()
        return tuple(row)
