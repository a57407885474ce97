from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from skill_credits.db import Database
from skill_credits.limits import service
from skill_credits.limits.schemas import Limit, LimitIn, LimitList, LimitPatch
from skill_credits.openapi import BODY, PathUserId, PathUuid, documented
from skill_credits.validation import path_user_id, path_uuid

Db = NamedDependency[Database]


class LimitController(Controller):
    path = "/v1/users/{user_id:str}/limits"
    tags = ["limits"]

    @post(
        "/",
        summary="Cap what is spent from the user's balance in a calendar window",
        **documented("createLimit", *BODY, "user_not_found", "limit_exists"),
    )
    async def create(self, user_id: PathUserId, data: JSONBody[LimitIn], db: Db) -> Limit:
        path_user_id(user_id)
        return await service.create(db, user_id, data)

    @get("/", summary="The user's limits, with spent now", **documented("listLimits", 400, 404))
    async def list_limits(self, user_id: PathUserId, db: Db) -> LimitList:
        path_user_id(user_id)
        return LimitList(await service.of_user(db, user_id))

    @patch(
        "/{limit_id:str}",
        summary="Change a limit's max_credits (from the next charge, this window too)",
        **documented("changeLimit", *BODY, 404),
    )
    async def change(
        self, user_id: PathUserId, limit_id: PathUuid, data: JSONBody[LimitPatch], db: Db
    ) -> Limit:
        path_user_id(user_id)
        return await service.change(db, user_id, str(path_uuid(limit_id)), data.max_credits)

    @delete("/{limit_id:str}", summary="Remove a limit", **documented("deleteLimit", 400, 404))
    async def remove(self, user_id: PathUserId, limit_id: PathUuid, db: Db) -> None:
        path_user_id(user_id)
        await service.delete(db, user_id, str(path_uuid(limit_id)))
