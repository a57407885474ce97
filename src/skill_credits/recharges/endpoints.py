from __future__ import annotations

from typing import Annotated

from litestar import Controller, Response, delete, get, post, put
from litestar.di import NamedDependency
from litestar.params import JSONBody
from litestar.params import Parameter as QueryParameter

from skill_credits import errors
from skill_credits.db import Database
from skill_credits.ledger.endpoints import created
from skill_credits.ledger.schemas import Transaction
from skill_credits.openapi import BODY, REPLAYED, PathUserId, PathUuid, documented, optional_string
from skill_credits.pagination import decode_time_cursor
from skill_credits.recharges import service
from skill_credits.recharges.schemas import (
    RECHARGE_STATUSES,
    AutoRecharge,
    AutoRechargeIn,
    FailIn,
    FulfilIn,
    Recharge,
    RechargePage,
)
from skill_credits.validation import path_user_id, path_uuid

Db = NamedDependency[Database]


class AutoRechargeController(Controller):
    path = "/v1/users/{user_id:str}"
    tags = ["auto-recharge"]

    @put(
        "/auto-recharge",
        summary="Set or replace the user's auto-recharge rule (active, failures cleared)",
        **documented("setAutoRecharge", *BODY, "user_not_found"),
    )
    async def set_rule(
        self, user_id: PathUserId, data: JSONBody[AutoRechargeIn], db: Db
    ) -> AutoRecharge:
        path_user_id(user_id)
        return await service.set_rule(db, user_id, data)

    @get(
        "/auto-recharge",
        summary="The user's auto-recharge rule",
        **documented("getAutoRecharge", 400, "user_not_found", "auto_recharge_not_found"),
    )
    async def get_rule(self, user_id: PathUserId, db: Db) -> AutoRecharge:
        path_user_id(user_id)
        return await service.get_rule(db, user_id)

    @delete(
        "/auto-recharge",
        summary="Remove the rule; a pending request is canceled",
        **documented("deleteAutoRecharge", 400, "user_not_found", "auto_recharge_not_found"),
    )
    async def delete_rule(self, user_id: PathUserId, db: Db) -> None:
        path_user_id(user_id)
        await service.delete_rule(db, user_id)

    @get(
        "/recharges",
        summary="The user's top-up requests, newest first",
        **documented("listRecharges", 400, "user_not_found"),
    )
    async def list_recharges(
        self,
        user_id: PathUserId,
        db: Db,
        limit: Annotated[int, QueryParameter(ge=1, le=200)] = 50,
        cursor: Annotated[
            str | None, QueryParameter(max_length=64, schema_extra=optional_string())
        ] = None,
        status: Annotated[
            str | None, QueryParameter(schema_extra=optional_string(enum=RECHARGE_STATUSES))
        ] = None,
    ) -> RechargePage:
        path_user_id(user_id)
        before = None
        if cursor is not None and (before := decode_time_cursor(cursor)) is None:
            raise errors.validation_error("cursor", "is not a cursor this API returned")
        if status is not None and status not in RECHARGE_STATUSES:
            raise errors.validation_error(
                "status", f"must be one of {', '.join(RECHARGE_STATUSES)}"
            )
        items, next_cursor = await service.of_user(db, user_id, status, before, limit)
        return RechargePage(items, next_cursor)


class RechargeController(Controller):
    path = "/v1/recharges"
    tags = ["auto-recharge"]

    @get("/{recharge_id:str}", summary="One top-up request", **documented("getRecharge", 400, 404))
    async def get_recharge(self, recharge_id: PathUuid, db: Db) -> Recharge:
        return await service.get(db, str(path_uuid(recharge_id)))

    @post(
        "/{recharge_id:str}/fulfil",
        summary="The host was paid: write the top-up (once; a repeat answers it again)",
        **documented(
            "fulfilRecharge",
            *BODY,
            "recharge_not_found",
            "recharge_not_pending",
            headers=(REPLAYED,),
        ),
    )
    async def fulfil(
        self, recharge_id: PathUuid, db: Db, data: JSONBody[FulfilIn | None] = None
    ) -> Response[Transaction]:
        body = data or FulfilIn()
        return created(await service.fulfil(db, str(path_uuid(recharge_id)), body.reference))

    @post(
        "/{recharge_id:str}/fail",
        status_code=200,
        summary="The host's payment failed: record why (the third failure in a row suspends)",
        **documented("failRecharge", *BODY, "recharge_not_found", "recharge_not_pending"),
    )
    async def fail(self, recharge_id: PathUuid, data: JSONBody[FailIn], db: Db) -> Recharge:
        return await service.fail(db, str(path_uuid(recharge_id)), data.reason)
