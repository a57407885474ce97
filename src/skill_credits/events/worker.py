"""`skill-credits worker`: delivers the events outbox to the webhook endpoints, writes
off expired grants that no request has touched, and rolls the log up for usage answers
(every ``usage_roll_interval`` seconds; docs/usage.md).

Every round (at most ``poll_interval`` apart) first sweeps the users with a grant or hold
past its expiry (``ledger.service.expire_due``), so an expiry is written off within a
second or so of its instant even for a user nobody reads, and its balance events are
delivered in the same round.

At least once: a batch of due deliveries is locked in a transaction that stays open
while they are sent, and each result is recorded in it. A worker killed mid-delivery
rolls that transaction back, so the deliveries are due again for the next worker;
receivers de-duplicate by the event id (``X-Skill-Credits-Event-Id``).

Each request is signed: ``X-Skill-Credits-Signature: t=<unix time>,v1=<hex>`` where
``v1`` is HMAC-SHA256 with the endpoint's secret over ``"<t>.<body>"``. A non-2xx
answer or a network error is retried with exponential backoff; after
``max_attempts`` the delivery is dead-lettered (status ``dead``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import signal
import time
from dataclasses import dataclass

import httpx

from skill_credits.db import Database
from skill_credits.events import repository as repo
from skill_credits.ledger import service as ledger_service
from skill_credits.settings import Settings
from skill_credits.usage import service as usage_service

log = logging.getLogger(__name__)

_DEFAULTS = Settings()  # the WEBHOOK_* defaults are Settings' fields


# a week of the log at most between two delivery rounds (a day a step): a worker catching
# up on a long log still sweeps expiries and delivers events in between
ROLL_STEPS_PER_ROUND = 7


@dataclass(frozen=True)
class WorkerConfig:
    batch: int = 20
    poll_interval: float = _DEFAULTS.webhook_poll_seconds
    max_attempts: int = _DEFAULTS.webhook_max_attempts
    backoff_base: float = _DEFAULTS.webhook_backoff_seconds
    backoff_cap: float = 600.0
    timeout: float = 5.0
    usage_roll_interval: float = _DEFAULTS.usage_roll_seconds


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(secret: str, header: str, body: bytes, tolerance: int = 300) -> bool:
    """What a receiver does: check the signature and that it is recent."""
    try:
        parts = dict(p.split("=", 1) for p in header.split(","))
        timestamp = int(parts["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, timestamp, body), header)


def backoff(config: WorkerConfig, attempts_done: int) -> float | None:
    """Seconds until the next try after ``attempts_done`` failures; None: give up."""
    if attempts_done >= config.max_attempts:
        return None
    return min(config.backoff_cap, config.backoff_base * 2 ** (attempts_done - 1))


async def deliver_due(db: Database, http: httpx.AsyncClient, config: WorkerConfig) -> int:
    async with db.transaction() as conn:
        due = await repo.claim_due(conn, config.batch)
        for d in due:
            body = json.dumps(
                {
                    "id": d.event_id,
                    "type": d.type,
                    "user_id": d.user_id,
                    "created_at": d.created_at.isoformat(),
                    "data": json.loads(d.data),
                },
                separators=(",", ":"),
            ).encode()
            headers = {
                "Content-Type": "application/json",
                "X-Skill-Credits-Event-Id": d.event_id,
                "X-Skill-Credits-Event-Type": d.type,
                "X-Skill-Credits-Signature": sign(d.secret, int(time.time()), body),
            }
            try:
                response = await http.post(d.url, content=body, headers=headers)
                error = (
                    None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
                )
            except httpx.HTTPError as exc:
                error = f"{exc.__class__.__name__}: {exc}"
            if error is None:
                await repo.mark_delivered(conn, d)
            else:
                retry_in = backoff(config, d.attempts + 1)
                await repo.mark_failed(conn, d, error, retry_in)
                log.warning("delivery of %s to %s failed: %s", d.event_id, d.url, error)
        return len(due)


async def run(db: Database, config: WorkerConfig, stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    rolled_at = float("-inf")
    async with httpx.AsyncClient(timeout=config.timeout) as http:
        while not stop.is_set():
            if loop.time() - rolled_at >= config.usage_roll_interval:
                rolled_at = loop.time()
                try:
                    await usage_service.roll(db, ROLL_STEPS_PER_ROUND)
                except Exception:  # noqa: BLE001 - the database blinked; try again later
                    log.exception("usage rollup failed")
            try:
                await ledger_service.expire_due(db)
            except Exception:  # noqa: BLE001 - the database blinked; try again shortly
                log.exception("expiry sweep failed")
            try:
                sent = await deliver_due(db, http, config)
            except Exception:  # noqa: BLE001 - the database blinked; try again shortly
                log.exception("delivery round failed")
                sent = 0
            if sent == 0:
                try:
                    await asyncio.wait_for(stop.wait(), config.poll_interval)
                except TimeoutError:
                    pass


async def main(db: Database, config: WorkerConfig) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await run(db, config, stop)
    finally:
        await db.dispose()
