"""The run's API keys, and a thin client of the HTTP API that the integration tests share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tests.support.run import unique


@dataclass(frozen=True)
class Keys:
    admin: str
    service: str
    revoked: str
    admin_name: str

    def auth(self, role: str | None) -> dict[str, str]:
        token = {"admin": self.admin, "service": self.service, "revoked": self.revoked}.get(
            role or ""
        )
        return {"Authorization": f"Bearer {token}"} if token else {}


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
