"""Metrics, request ids and structured logs.

- ``/metrics``: Litestar's Prometheus plugin (requests and latency by route template
  and status) plus the counters below. ``serve --workers N`` points every worker at
  one ``PROMETHEUS_MULTIPROC_DIR`` so a scrape of any worker counts them all.
- ``X-Request-ID``: taken from the request when it is a sane token, else made; set
  on the response and on every log line written while serving it.
- Logs are JSON lines on stderr. Nothing logs headers or bodies, so no API key or
  session id reaches a log.
"""

from __future__ import annotations

import contextvars
import itertools
import json
import logging
import re
import sys
import time
import uuid

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins.prometheus import PrometheusConfig, PrometheusController
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter

CHARGES = Counter(
    "skill_credits_charges_total",
    "Charge requests by skill and outcome (charged, replayed, or the error code)",
    ["skill", "outcome"],
)
CREDITS_CONSUMED = Counter(
    "skill_credits_credits_consumed_total", "Credits charged, by skill", ["skill"]
)
CACHE_LOOKUPS = Counter(
    "skill_credits_skill_cache_lookups_total", "Skill cache lookups by result", ["result"]
)

access_log = logging.getLogger("skill_credits.access")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def prometheus() -> tuple[PrometheusConfig, type[PrometheusController]]:
    config = PrometheusConfig(
        app_name="skill_credits",
        prefix="skill_credits_http",
        group_path=True,  # label by route template, not by raw path (bounded cardinality)
        exclude=["^/metrics", "^/static/"],
    )

    class MetricsController(PrometheusController):
        path = "/metrics"
        include_in_schema = True
        tags = ["operations"]

    return config, MetricsController


_ids = itertools.count()
_worker = uuid.uuid4().hex[:16]


def new_request_id() -> str:
    """32 hex digits, unique across workers and restarts: this worker's random half and a
    counter (cheaper than a uuid4 per request on the hot path)."""
    return f"{_worker}{next(_ids) & 0xFFFFFFFFFFFFFFFF:016x}"


class RequestIdMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        incoming = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                incoming = value.decode("latin-1")
                break
        rid = incoming if incoming and _VALID_ID.fullmatch(incoming) else new_request_id()
        token = request_id.set(rid)
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await next_app(scope, receive, send_with_id)
        finally:
            if access_log.isEnabledFor(logging.INFO):  # LOG_LEVEL=info: one line a request
                access_log.info(
                    "%s %s %s %.1fms",
                    scope["method"],
                    scope["path"],
                    status,
                    (time.perf_counter() - started) * 1000,
                )
            request_id.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id.get(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(level: str = "WARNING") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "litestar"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # skill_credits.access writes one line a request (with its id) at INFO
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
