"""A small async client for the skill-credits HTTP API, used by host applications.

Errors come back as ``BillingError`` carrying the problem details the API answered
(status, code, detail and any extra fields), so a host can pass them on unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec

from skill_credits.ledger.schemas import Hold, Transaction


@dataclass
class BillingError(Exception):
    status: int
    problem: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # Retry-After of a 429 or 503

    @property
    def code(self) -> str:
        return str(self.problem.get("code", "error"))

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.problem.get('detail', '')}"


class SkillCreditsClient:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = 5.0,
    ) -> None:
        self._own_http = http is None
        self.http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"}

    async def close(self) -> None:
        if self._own_http:
            await self.http.aclose()

    async def _post(self, path: str, body: dict[str, Any] | None, key: str | None) -> Any:
        headers = dict(self.headers)
        if key is not None:
            headers["Idempotency-Key"] = key
        payload = {k: v for k, v in (body or {}).items() if v is not None}
        response = await self.http.post(f"{self.base_url}{path}", json=payload, headers=headers)
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                problem = response.json()
            except ValueError:
                problem = {"detail": response.text}
            passed_on = {
                name: response.headers[name]
                for name in ("Retry-After",)
                if name in response.headers
            }
            raise BillingError(response.status_code, problem, passed_on)
        return response.content

    async def charge(
        self,
        user_id: str,
        skill: str,
        *,
        units: int = 1,
        description: str | None = None,
        member: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        body = {"user_id": user_id, "skill": skill, "units": units, "description": description}
        raw = await self._post("/v1/charges", {**body, "member": member}, idempotency_key)
        return msgspec.json.decode(raw, type=Transaction)

    async def refund(
        self,
        transaction_id: str,
        *,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        raw = await self._post(
            f"/v1/transactions/{transaction_id}/refund",
            {"description": description},
            idempotency_key,
        )
        return msgspec.json.decode(raw, type=Transaction)

    async def hold(
        self,
        user_id: str,
        skill: str,
        *,
        units: int = 1,
        ttl_seconds: int | None = None,
        description: str | None = None,
        member: str | None = None,
        idempotency_key: str | None = None,
    ) -> Hold:
        raw = await self._post(
            "/v1/holds",
            {
                "user_id": user_id,
                "skill": skill,
                "units": units,
                "ttl_seconds": ttl_seconds,
                "description": description,
                "member": member,
            },
            idempotency_key,
        )
        return msgspec.json.decode(raw, type=Hold)

    async def capture(
        self,
        hold_id: str,
        *,
        units: int | None = None,
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> Transaction:
        raw = await self._post(
            f"/v1/holds/{hold_id}/capture",
            {"units": units, "description": description},
            idempotency_key,
        )
        return msgspec.json.decode(raw, type=Transaction)

    async def release(self, hold_id: str) -> Hold:
        raw = await self._post(f"/v1/holds/{hold_id}/release", None, None)
        return msgspec.json.decode(raw, type=Hold)
