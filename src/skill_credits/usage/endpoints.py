from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency
from litestar.params import QueryParameter

from skill_credits import errors
from skill_credits.db import Database
from skill_credits.openapi import CsvToo, PathUserId, documented, optional_string
from skill_credits.usage import service
from skill_credits.usage.schemas import CSV_COLUMNS, GROUPS, INTERVALS, Forecast, Usage
from skill_credits.validation import (
    SKILL_NAME_RE,
    SKILL_NAME_RULE,
    USER_ID_RE,
    USER_ID_RULE,
    anchored,
    path_user_id,
)

Db = NamedDependency[Database]
CSV = "text/csv"  # Litestar adds "; charset=utf-8"


# RFC 3339's date-time: a full date, T, a full time with seconds, an offset (either case)
RFC_3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt]\d\d:\d\d:\d\d(\.\d{1,6})?\d*([Zz]|[+-]\d\d:\d\d)")


def instant(value: str | None, field: str) -> datetime | None:
    """An RFC 3339 date-time (``Z`` or ``±hh:mm``; digits past the microsecond dropped) that
    is an instant of years 1 to 9999 in UTC too, or 400 naming ``field``."""
    if value is None:
        return None
    found = RFC_3339.fullmatch(value)
    try:
        if found is None:
            raise ValueError(value)
        fraction, offset = found.group(1) or "", found.group(2).upper()
        whole = value[: found.start(1) if found.group(1) else found.start(2)]
        return datetime.fromisoformat(whole.upper() + fraction + offset).astimezone(UTC)
    except (ValueError, OverflowError):
        raise errors.validation_error(
            field, "must be an RFC 3339 date-time with an offset, e.g. 2026-03-01T00:00:00Z"
        ) from None


def one_of(value: str, choices: tuple[str, ...], field: str) -> str:
    if value not in choices:
        raise errors.validation_error(field, f"must be one of {', '.join(choices)}")
    return value


def matching(value: str | None, rule: Any, said: str, field: str) -> str | None:
    if value is not None and not rule.fullmatch(value):
        raise errors.validation_error(field, f"must be {said}")
    return value


def as_csv(answer: Usage) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for item in answer.items:
        row = (
            item.start.isoformat().replace("+00:00", "Z"),
            item.group,
            item.charges,
            item.units,
            item.consumed,
            item.refunded,
        )
        writer.writerow(["" if v is None else v for v in row])
    return out.getvalue()


def wants_csv(request: Request, output: str | None) -> bool:
    """``format`` if given, else what the Accept header prefers (JSON when it says neither)."""
    if output is not None:
        return one_of(output, ("json", "csv"), "format") == "csv"
    preferred = request.accept.best_match(["application/json", "text/csv"], "application/json")
    return preferred == "text/csv"


Instant = Annotated[
    str | None, QueryParameter(max_length=64, schema_extra=optional_string(format="date-time"))
]


class UsageController(Controller):
    path = "/v1"
    tags = ["usage"]

    @get(
        "/usage",
        summary="Consumption in calendar buckets, by skill, user, member or category",
        description="Exact: counts every transaction committed before the request began."
        " `Accept: text/csv` or `format=csv` answers the items as CSV.",
        **(documented("getUsage", 400, 404) | {"operation_class": CsvToo}),
    )
    async def get_usage(
        self,
        request: Request,
        db: Db,
        start: Annotated[
            str | None,
            QueryParameter(
                name="from", max_length=64, schema_extra=optional_string(format="date-time")
            ),
        ] = None,
        to: Instant = None,
        interval: Annotated[
            str, QueryParameter(schema_extra=optional_string(enum=INTERVALS))
        ] = "day",
        group_by: Annotated[str, QueryParameter(schema_extra=optional_string(enum=GROUPS))] = (
            "skill"
        ),
        user_id: Annotated[
            str | None,
            QueryParameter(
                max_length=200, schema_extra=optional_string(pattern=anchored(USER_ID_RE))
            ),
        ] = None,
        member: Annotated[
            str | None,
            QueryParameter(
                max_length=200, schema_extra=optional_string(pattern=anchored(USER_ID_RE))
            ),
        ] = None,
        skill: Annotated[
            str | None,
            QueryParameter(
                max_length=200, schema_extra=optional_string(pattern=anchored(SKILL_NAME_RE))
            ),
        ] = None,
        output: Annotated[
            str | None,
            QueryParameter(name="format", schema_extra=optional_string(enum=["json", "csv"])),
        ] = None,
    ) -> Response[Usage]:
        csv_wanted = wants_csv(request, output)
        query = service.Query(
            start=instant(start, "from"),
            end=instant(to, "to"),
            interval=one_of(interval, INTERVALS, "interval"),
            group_by=one_of(group_by, GROUPS, "group_by"),
            user_id=matching(user_id, USER_ID_RE, USER_ID_RULE, "user_id"),
            member=matching(member, USER_ID_RE, USER_ID_RULE, "member"),
            skill=matching(skill, SKILL_NAME_RE, SKILL_NAME_RULE, "skill"),
        )
        answer = await service.usage(db, query)
        if csv_wanted:
            content: Any = as_csv(answer)
            return Response(content, media_type=CSV, headers={"Vary": "Accept"})
        return Response(answer, headers={"Vary": "Accept"})

    @get(
        "/users/{user_id:str}/forecast",
        summary="A user's burn over the last seven days and the runway it leaves",
        **documented("getForecast", 400, 404),
    )
    async def get_forecast(self, user_id: PathUserId, db: Db) -> Forecast:
        path_user_id(user_id)
        return await service.forecast(db, user_id)
