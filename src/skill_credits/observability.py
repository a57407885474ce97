"""Metrics, request ids and structured logs.

- ``/metrics``: Litestar's Prometheus plugin (requests and latency by route template
  and status, through the leaner middleware below) plus the counters below.
  ``serve --workers N`` points every worker at one ``PROMETHEUS_MULTIPROC_DIR`` so a
  scrape of any worker counts them all.
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
from typing import Any

from litestar import get as http_get
from litestar.enums import MediaType, ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins.prometheus import (
    PrometheusConfig,
    PrometheusController,
    PrometheusMiddleware,
)
from litestar.types import ASGIApp, Message, Receive, Scope, Send
from prometheus_client import Counter, Histogram

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
BATCH_SIZES = Histogram(
    "skill_credits_batch_size",
    "Writes per call of a worker's batches, by write (charge, hold, capture; 1: sent alone)",
    ["write"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)

# Where the charge handler leaves the skill of a charge it refuses, for the hook below.
CHARGE_SKILL = "skill_credits.charge_skill"


async def count_refused_charge(exc: Exception, scope: Scope) -> None:
    """``after_exception`` hook: count every refused ``POST /v1/charges`` by its code,
    also those refused before the handler ran (body 400, 401, 413, 415). Unknown names
    stay out of the labels, so a client cannot grow the metrics."""
    handler = scope.get("route_handler")
    if handler is None or not handler.opt.get("counts_charges"):
        return
    from skill_credits.errors import code_of  # errors imports the database layer

    code = code_of(exc)
    skill = None if code in ("skill_not_found", "unauthorized") else scope.get(CHARGE_SKILL)
    CHARGES.labels(skill or "(unknown)", code).inc()


access_log = logging.getLogger("skill_credits.access")
request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
_VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def prometheus() -> tuple[PrometheusConfig, type[PrometheusController]]:
    config = PrometheusConfig(
        app_name="skill_credits",
        prefix="skill_credits_http",
        group_path=True,  # label by route template, not by raw path (bounded cardinality)
        exclude=["^/metrics", "^/static/"],
        middleware_class=RouteMetricsMiddleware,
    )

    class MetricsController(PrometheusController):
        path = "/metrics"
        include_in_schema = True
        tags = ["operations"]
        # Litestar's handler, documented as what it answers: Prometheus text.
        get = http_get(
            operation_id="getMetrics",
            media_type=MediaType.TEXT,
            summary="Prometheus metrics (text exposition format)",
        )(PrometheusController.get.fn)

    return config, MetricsController


class RouteMetricsMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware for a config like ours (route templates, no extra
    labels or exemplars): the same four metrics with the same labels and values (but no
    status on the in-progress gauge), without
    its per-request Request, URL, label dicts and ``labels()`` lookups. The labelled
    children are kept per (method, route, status), a bounded set. On the charge path
    this is about a tenth of a worker's CPU (bench/analysis.md).
    """

    def __init__(self, app: ASGIApp, config: PrometheusConfig) -> None:
        if not config.group_path or config.labels or config.exemplars:
            raise ValueError("RouteMetricsMiddleware counts by route template, no extra labels")
        if config.excluded_http_methods:
            raise ValueError("RouteMetricsMiddleware does not exclude methods")
        super().__init__(app, config)
        self._in_progress: dict[tuple[str, str], Any] = {}
        self._done: dict[tuple[str, str, int], tuple[Any, Any, Any | None]] = {}

    def _labels(self, method: str, path: str, status: int) -> dict[str, str | int | float]:
        # the parent's label names, in its order: they name the metrics it creates
        return {
            "method": method,
            "path": path,
            "status_code": status,
            "app_name": self._config.app_name,
        }

    def _in_progress_of(self, method: str, path: str) -> Any:
        child = self._in_progress.get((method, path))
        if child is None:
            # unlike the parent, which labels it status 200: a request in progress has none
            labels = self._labels(method, path, 200)
            del labels["status_code"]
            child = self.requests_in_progress(labels).labels(*labels.values())
            self._in_progress[(method, path)] = child
        return child

    def _done_of(self, method: str, path: str, status: int) -> tuple[Any, Any, Any | None]:
        children = self._done.get((method, path, status))
        if children is None:
            labels = self._labels(method, path, status)
            values = list(labels.values())
            errors = None
            if status >= 500:
                errors = self.requests_error_count(labels).labels(*values)
            children = (
                self.request_count(labels).labels(*values),
                self.request_time(labels).labels(*values),
                errors,
            )
            self._done[(method, path, status)] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"] if scope["type"] == ScopeType.HTTP else scope["type"]
        path = scope["path_template"]
        started = time.perf_counter()
        status = 200
        duration = 0.0

        async def timed_send(message: Message) -> None:
            nonlocal status, duration
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                duration = time.perf_counter() - started
            await send(message)

        in_progress = self._in_progress_of(method, path)
        in_progress.inc()
        try:
            await self.app(scope, receive, timed_send)
        finally:
            in_progress.dec()
            count, timing, errors = self._done_of(method, path, status)
            if errors is not None:
                errors.inc()
            count.inc()
            timing.observe(duration)


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
