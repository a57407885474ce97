"""RFC 9457 problem details with the contract's stable ``code`` field.

Every error the service answers goes through Litestar's ProblemDetailsPlugin: our own
``ApiError`` and, converted here, Litestar's HTTP exceptions and a lost database.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
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

from skill_credits.db.failures import is_unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Code:
    """One problem ``code`` of the contract: its HTTP status, its ``title``, and what it
    means (the OpenAPI document lists it under its status; None: not a route's answer)."""

    status: int
    title: str
    meaning: str | None = None


# The catalogue: a new error code is one line here and one constructor below.
CODES: dict[str, Code] = {
    "validation_error": Code(
        400,
        "Invalid request",
        "malformed JSON, a wrong type, an unknown field, an out-of-range value or a malformed"
        " path parameter, query parameter or header; `detail` (and `field`) name it",
    ),
    "unauthorized": Code(401, "Unauthorized", "no API key, or an unknown or revoked one"),
    "insufficient_credits": Code(402, "Insufficient credits", "the available credits are too few"),
    "forbidden": Code(403, "Forbidden", "the key's role may not do this"),
    "skill_disabled": Code(403, "Skill disabled", "the skill's kill switch is off"),
    "skill_not_found": Code(404, "Skill not found", "no skill of that name"),
    "user_not_found": Code(404, "User not found", "no user of that id"),
    "transaction_not_found": Code(404, "Transaction not found", "no transaction of that id"),
    "hold_not_found": Code(404, "Hold not found", "no hold of that id"),
    "limit_not_found": Code(404, "Limit not found", "the user has no limit of that id"),
    "auto_recharge_not_found": Code(
        404, "Auto-recharge not found", "the user has no auto-recharge rule"
    ),
    "recharge_not_found": Code(404, "Recharge not found", "no top-up request of that id"),
    "not_found": Code(404, "Not found"),
    "method_not_allowed": Code(405, "Method not allowed"),
    "skill_exists": Code(409, "Skill exists", "a skill of that name exists already"),
    "already_refunded": Code(409, "Already refunded", "the transaction was refunded already"),
    "not_refundable": Code(409, "Not refundable", "only a CONSUMPTION can be refunded"),
    "hold_not_active": Code(409, "Hold not active", "the hold was captured, released or expired"),
    "recharge_not_pending": Code(
        409,
        "Recharge not pending",
        "the top-up request was fulfilled, failed, expired or canceled already",
    ),
    "limit_exists": Code(
        409, "Limit exists", "the user has a limit of that member, skill and window already"
    ),
    "version_conflict": Code(
        412, "Version conflict", "the skill is at another version than If-Match"
    ),
    "payload_too_large": Code(413, "Payload too large", "the body is over 64 KiB"),
    "unsupported_media_type": Code(
        415, "Unsupported media type", "the body is not application/json"
    ),
    "idempotency_key_reused": Code(
        422,
        "Idempotency key reused",
        "this Idempotency-Key was used with a different request",
    ),
    "rate_limited": Code(429, "Too many requests"),
    "spend_limit_exceeded": Code(
        429,
        "Spend limit exceeded",
        "a spend limit would be passed; `limit` is the limit, `required` what the request"
        " would count, `Retry-After` the seconds until that limit resets",
    ),
    "service_unavailable": Code(
        503,
        "Service unavailable",
        "PostgreSQL cannot be reached, or too much contention on one user; nothing was"
        " written, retry",
    ),
    "internal_error": Code(500, "Internal error"),
}

# The code of a Litestar HTTP exception, which knows only its status.
_CODE_BY_STATUS = {
    CODES[code].status: code
    for code in (
        "validation_error",
        "unauthorized",
        "forbidden",
        "not_found",
        "method_not_allowed",
        "payload_too_large",
        "unsupported_media_type",
        "rate_limited",
        "service_unavailable",
    )
}


def _title(code: str, default: str) -> str:
    known = CODES.get(code)
    return known.title if known else default


class ApiError(ProblemDetailsException):
    """An error of the public contract: HTTP status plus a stable machine-readable code.

    Raise it through the constructors below (``problem`` or a named one), which take the
    status and title from ``CODES``."""

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
            title=_title(code, code),
            extra={"code": code, **(extra or {})},
            headers=headers,
        )
        self.code = code


def problem(
    code: str,
    detail: str,
    *,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ApiError:
    """The error ``code`` of the catalogue (KeyError for a code it does not hold)."""
    return ApiError(CODES[code].status, code, detail, extra=extra, headers=headers)


def validation_error(field: str, message: str) -> ApiError:
    return problem("validation_error", f"{field}: {message}", extra={"field": field})


def unauthorized() -> ApiError:
    return problem(
        "unauthorized",
        "a valid API key is required (Authorization: Bearer <key>)",
        headers={"WWW-Authenticate": "Bearer"},
    )


def insufficient_credits(credits: int, available: int, required: int) -> ApiError:
    return problem(
        "insufficient_credits",
        f"available credits {available} are below the {required} required",
        extra={"credits": credits, "available": available, "required": required},
    )


def _about(code: str, detail: str) -> Callable[[str], ApiError]:
    """The constructor of ``code`` whose detail names one thing: ``detail`` with ``{}``."""

    def make(subject: str) -> ApiError:
        return problem(code, detail.format(subject))

    make.__name__ = code
    return make


skill_disabled = _about("skill_disabled", "{} is disabled")
skill_not_found = _about("skill_not_found", "no skill named {}")
user_not_found = _about("user_not_found", "no user {}")
transaction_not_found = _about("transaction_not_found", "no transaction {}")
hold_not_found = _about("hold_not_found", "no hold {}")
limit_not_found = _about("limit_not_found", "no limit {} of this user")
auto_recharge_not_found = _about("auto_recharge_not_found", "user {} has no auto-recharge rule")
recharge_not_found = _about("recharge_not_found", "no top-up request {}")
recharge_not_pending = _about("recharge_not_pending", "top-up request {} is not pending")
skill_exists = _about("skill_exists", "a skill named {} exists already")
already_refunded = _about("already_refunded", "transaction {} was refunded already")
not_refundable = _about("not_refundable", "only CONSUMPTION can be refunded, not {}")
hold_not_active = _about("hold_not_active", "the hold is {}, not held")
forbidden = _about("forbidden", "{}")
unsupported_media_type = _about(
    "unsupported_media_type", "the body must be application/json, not {}"
)


def limit_exists(member: str | None, skill: str | None, window: str) -> ApiError:
    who = f"member {member}" if member is not None else "everyone"
    what = f"skill {skill}" if skill is not None else "every skill"
    return problem("limit_exists", f"the user has a {window} limit for {who} and {what} already")


def spend_limit_exceeded(limit: dict[str, Any], required: int, retry_after: int) -> ApiError:
    """429: ``limit`` (the limit's JSON) would be passed by ``required``; ``retry_after``
    whole seconds until it resets."""
    return problem(
        "spend_limit_exceeded",
        f"the {limit['window']} limit of {limit['max_credits']} has {limit['spent']} spent:"
        f" {required} more would pass it",
        extra={"limit": limit, "required": required},
        headers={"Retry-After": str(retry_after)},
    )


def version_conflict(name: str, current: int, expected: str) -> ApiError:
    return problem(
        "version_conflict",
        f"{name} is at version {current}, not {expected}: it changed meanwhile",
        extra={"current_version": current},
        headers={"ETag": f'"{current}"'},
    )


def idempotency_key_reused() -> ApiError:
    return problem(
        "idempotency_key_reused", "this Idempotency-Key was used with a different request"
    )


def contention() -> ApiError:
    """A write lost its race ``MAX_ATTEMPTS`` times: nothing was written."""
    return problem("service_unavailable", "too much contention on this user; retry")


def database_unavailable() -> ApiError:
    return problem(
        "service_unavailable",
        "the database cannot be reached; nothing was written",
        headers={"Retry-After": "1"},
    )


def session_store_unavailable() -> ApiError:
    return problem("service_unavailable", "the session store cannot be reached; retry")


def internal_error() -> ApiError:
    return problem("internal_error", "an unexpected error occurred")


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
        title=_title(code, exc.__class__.__name__),
        extra=extra,
        headers=headers,
    )


def _from_database_error(exc: Exception) -> ProblemDetailsException:
    if is_unavailable(exc):
        log.warning("database unavailable: %s", exc.__class__.__name__)
        return database_unavailable()
    log.exception("unexpected database error", exc_info=exc)
    return internal_error()


def _from_redis_error(exc: RedisError) -> ProblemDetailsException:
    """Only the admin UI's sessions and login rate limit need Redis; the API does not."""
    log.warning("redis unavailable for a session or rate limit: %s", exc.__class__.__name__)
    return session_store_unavailable()


def internal_error_handler(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return internal_error().to_response(request)


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
