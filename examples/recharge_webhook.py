"""A host application's side of auto-recharge: a webhook receiver that pays for top-ups.

skill-credits holds no card. When a user's balance runs low it writes one
`balance.recharge_requested` event; its worker (`skill-credits worker`) delivers it, signed,
to every webhook endpoint. This receiver, end to end:

1. verifies the signature (`X-Skill-Credits-Signature`) and ignores every other event;
2. charges the user's saved card off-session, with the **request's id as the payment
   processor's idempotency key**: a redelivered event, or a retry of this handler, charges
   the card once;
3. tells skill-credits how it went: `POST /v1/recharges/{id}/fulfil` with the payment's id
   (idempotent too: a repeat answers the same purchase), or `POST /v1/recharges/{id}/fail`
   with the processor's reason (the third failure in a row suspends the rule). If the
   request was canceled or expired meanwhile (a fulfil answers 409), the payment is
   refunded.

Run skill-credits (`make run` and `skill-credits worker`), make a service key, then

    SKILL_CREDITS_KEY=... SKILL_CREDITS_WEBHOOK_SECRET=... \\
        uv run python examples/recharge_webhook.py          # serves :8002
    skill-credits webhooks add http://127.0.0.1:8002/webhooks/skill-credits

(`webhooks add` prints the secret). `FakeProcessor` stands in for a real payment processor:
replace it with your processor's client (its off-session charge and refund calls).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
from litestar import Litestar, Request, post
from litestar.exceptions import HTTPException

from skill_credits.events.worker import verify

PRICE_PER_CREDIT_CENTS = 1


class Declined(Exception):
    """The processor refused the payment; the message says why."""


class PaymentProcessor(Protocol):
    async def charge_off_session(self, customer: str, cents: int, idempotency_key: str) -> str:
        """The payment's id; raises Declined."""
        ...

    async def refund(self, payment_id: str) -> None: ...


@dataclass
class FakeProcessor:
    """A payment processor in memory, as real ones behave: a repeat of an idempotency key
    answers what the first call answered and charges nothing more."""

    declining: set[str] = field(default_factory=set)  # customers whose card is declined
    payments: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key

    async def charge_off_session(self, customer: str, cents: int, idempotency_key: str) -> str:
        if idempotency_key not in self.payments:
            declined = customer in self.declining
            self.payments[idempotency_key] = {
                "id": f"pay_{uuid.uuid4().hex[:12]}",
                "customer": customer,
                "cents": cents,
                "status": "declined" if declined else "succeeded",
            }
        payment = self.payments[idempotency_key]
        if payment["status"] == "declined":
            raise Declined("card_declined: the card was declined")
        return str(payment["id"])

    async def refund(self, payment_id: str) -> None:
        for payment in self.payments.values():
            if payment["id"] == payment_id:
                payment["status"] = "refunded"


def create_app(
    service_url: str, service_key: str, webhook_secret: str, processor: PaymentProcessor
) -> Litestar:
    @asynccontextmanager
    async def skill_credits_client(app: Litestar) -> AsyncIterator[None]:
        headers = {"Authorization": f"Bearer {service_key}"}
        async with httpx.AsyncClient(base_url=service_url, headers=headers, timeout=10) as http:
            app.state.skill_credits = http
            yield

    @post("/webhooks/skill-credits", status_code=200)
    async def receive(request: Request) -> dict[str, str]:
        body = await request.body()
        signature = request.headers.get("X-Skill-Credits-Signature", "")
        if not verify(webhook_secret, signature, body):
            raise HTTPException(status_code=401, detail="bad signature")
        event = json.loads(body)
        if event["type"] != "balance.recharge_requested":
            return {"ignored": event["type"]}
        asked = event["data"]
        http: httpx.AsyncClient = request.app.state.skill_credits
        try:
            payment = await processor.charge_off_session(
                customer=asked["user_id"],
                cents=asked["amount"] * PRICE_PER_CREDIT_CENTS,
                idempotency_key=asked["id"],
            )
        except Declined as exc:
            r = await http.post(f"/v1/recharges/{asked['id']}/fail", json={"reason": str(exc)})
            if r.status_code == 409:  # fulfilled, canceled or expired meanwhile
                return {"recharge": asked["id"], "status": "not pending"}
            r.raise_for_status()  # anything else: answer 500, and the event comes again
            return {"recharge": asked["id"], "status": "failed"}
        r = await http.post(f"/v1/recharges/{asked['id']}/fulfil", json={"reference": payment})
        if r.status_code == 409:  # canceled or expired before it was paid: give it back
            await processor.refund(payment)
            return {"recharge": asked["id"], "status": "refunded"}
        r.raise_for_status()
        return {"recharge": asked["id"], "status": "fulfilled", "transaction": r.json()["id"]}

    return Litestar(route_handlers=[receive], lifespan=[skill_credits_client])


if __name__ == "__main__":
    import uvicorn

    app = create_app(
        os.environ.get("SKILL_CREDITS_URL", "http://127.0.0.1:8000"),
        os.environ["SKILL_CREDITS_KEY"],
        os.environ["SKILL_CREDITS_WEBHOOK_SECRET"],
        FakeProcessor(),
    )
    uvicorn.run(app, host="127.0.0.1", port=8002)
