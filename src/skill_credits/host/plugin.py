"""Charging inside a host Litestar app: charge a tool's request before its work runs.

    from skill_credits.host.plugin import SkillCredits, charge, hold

    billing = SkillCredits(base_url=..., api_key=..., user_id=lambda request: request.user.id)
    app = Litestar(route_handlers=[...], plugins=[billing])

    @post("/tools/summarize", dependencies={"billing": charge("SUMMARIZE")})
    async def summarize(data: JSONBody[Text], billing: NamedDependency[Charged]) -> Summary: ...

``charge`` charges before the handler runs and refunds if the handler raises;
``hold`` reserves before, captures the units the handler reports on success, and
releases on failure. Refusals (402/403/404/429) answer the client with the same problem
details as the HTTP API (a 429 with its ``Retry-After``).

Both take the ``member`` who spends from the user's balance, as a function of the
request (for instance ``member=lambda request: request.user.name``); the plugin's
``member`` is the default for every route.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, cast

from litestar import Litestar, Request, Response
from litestar.config.app import AppConfig
from litestar.di import Provide
from litestar.plugins import InitPluginProtocol

from skill_credits.host.client import BillingError, SkillCreditsClient
from skill_credits.ledger.schemas import Hold, Transaction

__all__ = ["BillingError", "Charged", "Held", "SkillCredits", "charge", "hold"]

STATE_KEY = "skill_credits"


def _problem_response(_: Request, exc: BillingError) -> Response:
    return Response(
        exc.problem,
        status_code=exc.status,
        media_type="application/problem+json",
        headers=exc.headers,
    )


@dataclass
class Charged:
    """What the handler gets from ``charge``: the CONSUMPTION transaction."""

    transaction: Transaction


class Held:
    """What the handler gets from ``hold``: report the units actually used."""

    def __init__(self, hold: Hold) -> None:
        self.hold = hold
        self.units: int = hold.units
        self.captured: Transaction | None = None

    def use(self, units: int) -> None:
        self.units = units


class SkillCredits(InitPluginProtocol):
    """Plugin: one client for the app, and problem responses for billing refusals."""

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str,
        user_id: Callable[[Request], str],
        member: Callable[[Request], str | None] | None = None,
        http: Any = None,
    ) -> None:
        self.base_url = base_url
        self.api_key = api_key
        self.user_id = user_id
        self.member = member
        self.http = http
        self.client: SkillCreditsClient | None = None

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.exception_handlers[BillingError] = _problem_response
        app_config.on_startup.append(self._start)
        app_config.on_shutdown.append(self._stop)
        return app_config

    async def _start(self, app: Litestar) -> None:
        self.client = SkillCreditsClient(self.base_url, self.api_key, http=self.http)
        app.state[STATE_KEY] = self

    async def _stop(self, app: Litestar) -> None:
        if self.client is not None:
            await self.client.close()


Member = Callable[[Request], str | None]


def _billed(
    request: Request, kind: str, description: str | None, member: Member | None
) -> tuple[SkillCreditsClient, str, dict[str, Any]]:
    """The client, the request's user, and the arguments a charge and a hold share: a
    description, the member (the route's, else the plugin's), and the request's
    Idempotency-Key made one per ``kind`` of call."""
    billing: SkillCredits = request.app.state[STATE_KEY]
    key = request.headers.get("Idempotency-Key")
    who = member or billing.member
    return (
        cast(SkillCreditsClient, billing.client),  # set on startup
        billing.user_id(request),
        {
            "description": description or f"{request.method} {request.url.path}",
            "member": who(request) if who is not None else None,
            "idempotency_key": f"{key}:{kind}" if key else None,
        },
    )


def charge(
    skill: str, *, units: int = 1, description: str | None = None, member: Member | None = None
) -> Provide:
    """A dependency that charges ``skill`` before the handler and refunds if it raises."""

    async def dependency(request: Request) -> AsyncGenerator[Charged, None]:
        client, user_id, shared = _billed(request, "charge", description, member)
        tx = await client.charge(user_id, skill, units=units, **shared)
        try:
            yield Charged(tx)
        except Exception:
            await client.refund(
                tx.id, description="the tool failed", idempotency_key=f"refund:{tx.id}"
            )
            raise

    return Provide(dependency)


def hold(
    skill: str,
    *,
    units: int,
    ttl_seconds: int = 900,
    description: str | None = None,
    member: Member | None = None,
) -> Provide:
    """A dependency that reserves ``units`` before the handler, captures what it used
    (``held.use(n)``; all reserved units by default) and releases everything if it raises."""

    async def dependency(request: Request) -> AsyncGenerator[Held, None]:
        client, user_id, shared = _billed(request, "hold", description, member)
        reserved = await client.hold(user_id, skill, units=units, ttl_seconds=ttl_seconds, **shared)
        held = Held(reserved)
        try:
            yield held
        except Exception:
            await client.release(reserved.id)
            raise
        held.captured = await client.capture(
            reserved.id, units=held.units, idempotency_key=f"capture:{reserved.id}"
        )

    return Provide(dependency)
