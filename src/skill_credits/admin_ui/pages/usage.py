"""The usage page: credits consumed over time by skill and by category, refunds, the top
users, the route's filters, and a CSV of what is shown (GET /v1/usage's answers)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import QueryParameter
from litestar.response import Template

from skill_credits.admin_ui import charts
from skill_credits.admin_ui.pages.shared import Db, pop_flash
from skill_credits.admin_ui.session import admin_session
from skill_credits.errors import ApiError
from skill_credits.usage import service as usage_service
from skill_credits.usage.endpoints import CSV, as_csv
from skill_credits.usage.schemas import INTERVALS
from skill_credits.validation import SKILL_NAME_RE, SKILL_NAME_RULE, USER_ID_RE, USER_ID_RULE

TOP_USERS = 10
Text = Annotated[str | None, QueryParameter(max_length=200)]


@dataclass(frozen=True)
class Filters:
    """The page's form: dates (UTC days, both included) and the route's filters."""

    since: str = ""
    until: str = ""
    interval: str = "day"
    user_id: str = ""
    member: str = ""
    skill: str = ""

    def query(self, group_by: str) -> usage_service.Query:
        """The usage query these filters ask; ValueError with a sentence for a bad one."""
        start = _day(self.since, "From") if self.since else None
        end = _day(self.until, "To", then=timedelta(days=1)) if self.until else None
        if self.interval not in INTERVALS:
            raise ValueError(f"Interval is one of {', '.join(INTERVALS)}.")
        for value, rule, said, name in (
            (self.user_id, USER_ID_RE, USER_ID_RULE, "A user id"),
            (self.member, USER_ID_RE, USER_ID_RULE, "A member"),
            (self.skill, SKILL_NAME_RE, SKILL_NAME_RULE, "A skill name"),
        ):
            if value and not rule.fullmatch(value):
                raise ValueError(f"{name} is {said}.")
        return usage_service.Query(
            start=start,
            end=end,
            interval=self.interval,
            group_by=group_by,
            user_id=self.user_id or None,
            member=self.member or None,
            skill=self.skill or None,
        )

    def params(self) -> dict[str, str]:
        return {k: v for k, v in vars(self).items() if v}


def _day(value: str, name: str, then: timedelta = timedelta()) -> datetime:
    """00:00 UTC of the day ``value`` (YYYY-MM-DD), plus ``then``."""
    try:
        return datetime.combine(date.fromisoformat(value), time(), tzinfo=UTC) + then
    except (ValueError, OverflowError):
        raise ValueError(f"{name} is a date, YYYY-MM-DD, before 9999-12-31.") from None


async def _answers(db: Any, filters: Filters) -> dict[str, Any]:
    """The page's three reads, over one range (the first answer's: "now" read once)."""
    by_skill = await usage_service.usage(db, filters.query("skill"))
    same = {"start": by_skill.from_, "end": by_skill.to}
    return {
        "skill": by_skill,
        "category": await usage_service.usage(db, replace(filters.query("category"), **same)),
        "top": await usage_service.top_users(db, replace(filters.query("user"), **same), TOP_USERS),
    }


def _message(exc: ValueError | ApiError) -> str:
    if isinstance(exc, ApiError):
        return exc.detail[:1].upper() + exc.detail[1:] + "."
    return str(exc)


def filters_of(
    since: Annotated[str | None, QueryParameter(name="from", max_length=32)] = None,
    until: Annotated[str | None, QueryParameter(name="to", max_length=32)] = None,
    interval: Annotated[str | None, QueryParameter(max_length=16)] = None,
    user_id: Text = None,
    member: Text = None,
    skill: Text = None,
) -> Filters:
    """The page's query string as Filters (the dependency ``filters`` of both routes)."""
    return Filters(
        since or "", until or "", interval or "day", user_id or "", member or "", skill or ""
    )


FiltersDep = NamedDependency[Filters]


class UsagePagesController(Controller):
    path = "/admin"
    guards = [admin_session]
    include_in_schema = False
    dependencies = {"filters": Provide(filters_of, sync_to_thread=False)}

    @get("/usage")
    async def usage(self, request: Request, db: Db, filters: FiltersDep) -> Template:
        context: dict[str, Any] = {
            "f": filters,
            "flash": pop_flash(request),
            "error": None,
            "intervals": INTERVALS,
        }
        try:
            answers = await _answers(db, filters)
        except (ValueError, ApiError) as exc:
            context["error"] = _message(exc)
            status = exc.status_code if isinstance(exc, ApiError) else 400
            return Template("usage.html", context=context, status_code=status)
        by_skill = answers["skill"]
        context.update(
            answer=by_skill,
            by_skill=charts.over_time("Credits consumed by skill", by_skill),
            by_category=charts.over_time("Credits consumed by category", answers["category"]),
            refunds=charts.over_time("Credits refunded by skill", by_skill, "refunded"),
            refund_totals=[t for t in by_skill.totals if t.refunded],
            top_users=answers["top"],
            csv_query=filters.params(),
        )
        return Template("usage.html", context=context)

    @get("/charts.css", media_type="text/css; charset=utf-8", cache=3600)
    async def charts_css(self) -> str:
        return charts.stylesheet()

    @get("/usage.csv")
    async def usage_csv(self, db: Db, filters: FiltersDep) -> Response:
        try:
            answer = await usage_service.usage(db, filters.query("skill"))
        except (ValueError, ApiError) as exc:
            status = exc.status_code if isinstance(exc, ApiError) else 400
            return Response(_message(exc), status_code=status, media_type="text/plain")
        return Response(
            as_csv(answer),
            media_type=CSV,
            headers={"Content-Disposition": 'attachment; filename="usage.csv"'},
        )
