"""What /schema/openapi.json says about errors, in one place.

Left alone, Litestar documents each operation's success and, for any route with
parameters, a 400 in its own default shape (``{status_code, detail, extra}`` as
application/json) that this service never sends: every error goes through errors.py
as ``application/problem+json``. So every /v1 handler declares here, with
``documented(operation_id, *statuses)``, each error status it can answer; each is
documented as one shared ``Problem`` schema (``InsufficientCredits`` and
``VersionConflict``, ``SpendLimitExceeded`` add the extras of 402, 412 and 429), and the
headers some errors carry.
A declared 400 replaces Litestar's default one. A client generated from the document
then gets a type for every answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from litestar.datastructures import ResponseHeader
from litestar.openapi import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIHeader,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Schema,
)
from litestar.params import PathParameter
from msgspec import UNSET, Struct, UnsetType

from skill_credits.errors import CODES
from skill_credits.limits.schemas import Limit
from skill_credits.validation import IDEMPOTENCY_KEY_RE, SKILL_NAME_RE, USER_ID_RE, anchored

PROBLEM_JSON = "application/problem+json"

# Path and header parameters as the document states them (validation.py checks them).
PathUserId = Annotated[
    str, PathParameter(schema_extra={"pattern": anchored(USER_ID_RE), "max_length": 128})
]
PathSkillName = Annotated[
    str, PathParameter(schema_extra={"pattern": anchored(SKILL_NAME_RE), "max_length": 64})
]
PathUuid = Annotated[str, PathParameter(schema_extra={"format": "uuid"})]


def optional_string(**schema: Any) -> dict[str, Any]:
    """``schema_extra`` of an optional header or query parameter: absent or a string,
    never null (Litestar would say ``oneOf: [string, null]`` for ``str | None``)."""
    return {"type": "string", "one_of": None, **schema}


IDEMPOTENCY_KEY_SCHEMA = optional_string(
    pattern=anchored(IDEMPOTENCY_KEY_RE), min_length=1, max_length=255
)


class Problem(Struct, kw_only=True):
    """RFC 9457 problem details with the contract's stable machine-readable ``code``."""

    status: int
    title: str
    detail: str
    code: str
    field: str | UnsetType = UNSET  # the offending field of a 400, when there is one


class InsufficientCredits(Problem, kw_only=True):
    """402: ``available`` (``credits`` less what holds reserve) is below ``required``."""

    credits: int
    available: int
    required: int


class VersionConflict(Problem, kw_only=True):
    """412: ``If-Match`` named another version than ``current_version``."""

    current_version: int


class SpendLimitExceeded(Problem, kw_only=True):
    """429: the request would take ``limit`` past its ``max_credits``; it would count
    ``required``."""

    limit: Limit
    required: int


# The statuses whose problem carries extras beyond ``Problem``'s.
_SCHEMAS: dict[int, type[Problem]] = {
    402: InsufficientCredits,
    412: VersionConflict,
    429: SpendLimitExceeded,
}


def _description(status: int) -> str:
    """The codes a status can carry and what each means, from the errors catalogue."""
    return "; ".join(
        f"`{code}`: {known.meaning}"
        for code, known in CODES.items()
        if known.status == status and known.meaning is not None
    )


# status: (schema, description), for every status a route of the catalogue can answer
_PROBLEMS: dict[int, tuple[type[Problem], str]] = {
    status: (_SCHEMAS.get(status, Problem), _description(status))
    for status in sorted({known.status for known in CODES.values() if known.meaning})
}

_SPECS = {
    status: ResponseSpec(
        data_container=schema,
        description=description,
        media_type=PROBLEM_JSON,
        generate_examples=False,
    )
    for status, (schema, description) in _PROBLEMS.items()
}


def _header(kind: OpenAPIType, description: str, *, required: bool) -> OpenAPIHeader:
    return OpenAPIHeader(schema=Schema(type=kind), description=description, required=required)


_PROBLEM_HEADERS = {
    "401": {"WWW-Authenticate": _header(OpenAPIType.STRING, "`Bearer`", required=True)},
    "412": {
        "ETag": _header(OpenAPIType.STRING, 'The current version, quoted: `"3"`', required=True)
    },
    "429": {
        "Retry-After": _header(
            OpenAPIType.INTEGER,
            "Whole seconds until the limit that refused resets (at least 1)",
            required=True,
        )
    },
    "503": {
        "Retry-After": _header(
            OpenAPIType.INTEGER,
            "Seconds to wait; sent when PostgreSQL cannot be reached",
            required=False,
        )
    },
}

# Every /v1 route reads the API key first (from PostgreSQL, or the charge's own statement).
ALWAYS = (401, 503)
BODY = (400, 413, 415)

REPLAYED = ResponseHeader(
    name="Idempotent-Replayed",
    value="true",
    documentation_only=True,
    description="`true` when this is the stored answer to an earlier request with the same"
    " Idempotency-Key; absent otherwise",
)
ETAG = ResponseHeader(
    name="ETag",
    value='"1"',
    documentation_only=True,
    required=True,
    description='The skill\'s version, quoted (`"3"`): send it back as If-Match',
)


@dataclass
class _ProblemOperation(Operation):
    """An operation whose problem responses also document their headers (a
    ``ResponseSpec`` has no place for them)."""

    def __post_init__(self) -> None:
        for status, response in (self.responses or {}).items():
            if status in _PROBLEM_HEADERS and isinstance(response, OpenAPIResponse):
                response.headers = {**(response.headers or {}), **_PROBLEM_HEADERS[status]}


class CsvToo(_ProblemOperation):
    """An operation whose success may also be ``text/csv`` (GET /v1/usage, by Accept or
    ``format=csv``): the document names both media types of its 200."""

    def __post_init__(self) -> None:
        super().__post_init__()
        ok = (self.responses or {}).get("200")
        if isinstance(ok, OpenAPIResponse):
            ok.content = {
                **(ok.content or {}),
                "text/csv": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING)),
            }


def documented(
    operation_id: str, *answers: int | str, headers: tuple[ResponseHeader, ...] = ()
) -> dict[str, Any]:
    """Route decorator arguments for a /v1 handler: its short ``operationId``, one problem
    response for each error it can answer (401 and 503 always), and the headers of its
    success response. An error is a status or a code of the catalogue (its status)."""
    statuses = {CODES[a].status if isinstance(a, str) else a for a in answers}
    return {
        "operation_id": operation_id,
        "responses": {status: _SPECS[status] for status in sorted({*ALWAYS, *statuses})},
        "operation_class": _ProblemOperation,
        "response_headers": list(headers),
    }
