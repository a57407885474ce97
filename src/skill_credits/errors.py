"""RFC 9457 problem details with the contract's stable ``code`` field.

Every error the service answers goes through Litestar's ProblemDetailsPlugin: our own
``ApiError`` and, converted here, Litestar's HTTP exceptions and a lost database.
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from redis.exceptions import RedisError
from sqlalchemy import exc as sa_exc

from skill_credits.db import is_unavailable

log = logging.getLogger(__name__)

TITLES = {
    "validation_error": "Invalid request",
    "unauthorized": "Unauthorized",
    "insufficient_credits": "Insufficient credits",
    "forbidden": "Forbidden",
    "skill_disabled": "Skill disabled",
    "skill_not_found": "Skill not found",
    "user_not_found": "User not found",
    "transaction_not_found": "Transaction not found",
    "hold_not_found": "Hold not found",
    "not_found": "Not found",
    "method_not_allowed": "Method not allowed",
    "skill_exists": "Skill exists",
    "already_refunded": "Already refunded",
    "not_refundable": "Not refundable",
    "hold_not_active": "Hold not active",
    "version_conflict": "Version conflict",
    "payload_too_large": "Payload too large",
    "unsupported_media_type": "Unsupported media type",
    "idempotency_key_reused": "Idempotency key reused",
    "rate_limited": "Too many requests",
    "service_unavailable": "Service unavailable",
    "internal_error": "Internal error",
}

_CODE_BY_STATUS = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "service_unavailable",
}


class ApiError(ProblemDetailsException):
    """An error of the public contract: HTTP status plus a stable machine-readable code."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            detail=detail,
            status_code=status,
            title=TITLES.get(code, code),
            extra={"code": code, **(extra or {})},
            headers=headers,
        )
        self.code = code


def validation_error(field: str, message: str) -> ApiError:
    return ApiError(400, "validation_error", f"{field}: {message}", extra={"field": field})


def _validation_detail(exc: ValidationException) -> tuple[str, str | None]:
    """Litestar's message names the handler; the field is in ``extra``. Say the field."""
    if isinstance(exc.extra, list) and exc.extra:
        first = exc.extra[0]
        if isinstance(first, dict):
            message = str(first.get("message", exc.detail))
            key = first.get("key")
            # msgspec says "... - at `$.units`": turn that into "units: ..."
            if " - at `$." in message:
                message, _, path = message.partition(" - at `$.")
                key = path.rstrip("`")
            if not key or key == "data":
                key = "body"
            return f"{key}: {message}", str(key)
    return f"body: {exc.detail}", "body"


def _http_code(status: int) -> str:
    return _CODE_BY_STATUS.get(status, "internal_error" if status >= 500 else "bad_request")


def code_of(exc: Exception) -> str:
    """The ``code`` of the problem details that ``exc`` is answered with."""
    if isinstance(exc, ApiError):
        return exc.code
    if isinstance(exc, HTTPException):
        return _http_code(exc.status_code)
    return "service_unavailable" if is_unavailable(exc) else "internal_error"


def _from_http_exception(exc: HTTPException) -> ProblemDetailsException:
    status = exc.status_code
    code = _http_code(status)
    extra: dict[str, Any] = {"code": code}
    headers = exc.headers
    detail = str(exc.detail)
    if isinstance(exc, ValidationException):
        detail, field = _validation_detail(exc)
        if field:
            extra["field"] = field
    elif status == 400:
        detail = f"body: {detail}" if "JSON" in detail or "decode" in detail.lower() else detail
    elif status == 413:
        detail = "the request body is larger than 64 KiB"
    elif status == 429:  # the login limit (litestar's rate limit middleware)
        retry = max(1, int((headers or {}).get("RateLimit-Reset", "60")))
        headers = {**(headers or {}), "Retry-After": str(retry)}
        detail = f"too many attempts from this address; retry in {retry} s"
    return ProblemDetailsException(
        detail=detail,
        status_code=status,
        title=TITLES.get(code, exc.__class__.__name__),
        extra=extra,
        headers=headers,
    )


def _from_database_error(exc: Exception) -> ProblemDetailsException:
    if is_unavailable(exc):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return ApiError(
            503,
            "service_unavailable",
            "the database cannot be reached; nothing was written",
            headers={"Retry-After": "1"},
        )
    log.exception("unexpected database error", exc_info=exc)
    return ApiError(500, "internal_error", "an unexpected error occurred")


def _from_redis_error(exc: RedisError) -> ProblemDetailsException:
    """Only the admin UI's sessions and login rate limit need Redis; the API does not."""
    log.warning("redis unavailable for a session or rate limit: %s", exc.__class__.__name__)
    return ApiError(503, "service_unavailable", "the session store cannot be reached; retry")


def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return ApiError(500, "internal_error", "an unexpected error occurred").to_response(request)


def problem_details_plugin() -> ProblemDetailsPlugin:
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                HTTPException: _from_http_exception,
                sa_exc.DBAPIError: _from_database_error,
                sa_exc.TimeoutError: _from_database_error,
                OSError: _from_database_error,
                asyncpg.PostgresError: _from_database_error,
                asyncpg.InterfaceError: _from_database_error,
                RedisError: _from_redis_error,
            }
        )
    )
