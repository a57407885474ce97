from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, get, put
from litestar.di import NamedDependency
from litestar.params import JSONBody, QueryParameter

from skill_credits import errors
from skill_credits.auth import principal_of
from skill_credits.db import Database
from skill_credits.events import repository as repo
from skill_credits.events import service
from skill_credits.events.schemas import (
    ADMIN_EVENT_TYPES,
    EVENT_TYPES,
    EventPage,
    Threshold,
    ThresholdIn,
)
from skill_credits.openapi import BODY, PathUserId, documented, optional_string
from skill_credits.pagination import decode_cursor, decode_time_cursor
from skill_credits.validation import USER_ID_RE, anchored, path_user_id

Db = NamedDependency[Database]


class EventController(Controller):
    path = "/v1"
    tags = ["events"]

    @get("/events", summary="The events outbox, newest first", **documented("listEvents", 400, 403))
    async def list_events(
        self,
        request: Request,
        db: Db,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(max_length=64, schema_extra=optional_string())
        ] = None,
        event_type: Annotated[
            str | None,
            QueryParameter(name="type", schema_extra=optional_string(enum=EVENT_TYPES)),
        ] = None,
        user_id: Annotated[
            str | None,
            QueryParameter(
                max_length=200, schema_extra=optional_string(pattern=anchored(USER_ID_RE))
            ),
        ] = None,
    ) -> EventPage:
        # a bare seq: a cursor of the feed's former order, so a client paging across the
        # upgrade goes on
        before = (decode_time_cursor(cursor) or decode_cursor(cursor)) if cursor else None
        if cursor is not None and before is None:
            raise errors.validation_error("cursor", "is not a cursor this API returned")
        if event_type is not None and event_type not in EVENT_TYPES:
            raise errors.validation_error("type", f"must be one of {', '.join(EVENT_TYPES)}")
        if user_id is not None and not USER_ID_RE.fullmatch(user_id):
            raise errors.validation_error("user_id", "is not a user id")
        # skill.changed names admin keys and inactive skills, which only admin routes show
        types: str | tuple[str, ...] | None = event_type
        if not principal_of(request).is_admin:
            if event_type in ADMIN_EVENT_TYPES:
                raise errors.forbidden(f"{event_type} events need an admin key")
            types = event_type or tuple(t for t in EVENT_TYPES if t not in ADMIN_EVENT_TYPES)
        async with db.connect() as conn:
            items, next_cursor = await repo.page(conn, limit, before, types, user_id)
        return EventPage(items, next_cursor)

    @put(
        "/users/{user_id:str}/low-balance-threshold",
        summary="Set the low-balance threshold",
        **documented("setLowBalanceThreshold", *BODY, 404),
    )
    async def set_threshold(
        self, user_id: PathUserId, data: JSONBody[ThresholdIn], db: Db
    ) -> Threshold:
        path_user_id(user_id)
        async with db.connect() as conn:
            return await service.set_threshold(conn, user_id, data.low_balance_threshold)
