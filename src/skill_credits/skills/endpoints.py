from __future__ import annotations

from typing import Annotated

from litestar import Controller, Request, Response, get, patch, post
from litestar.di import NamedDependency
from litestar.params import HeaderParameter, JSONBody

from skill_credits.auth import require_admin
from skill_credits.db import Database
from skill_credits.openapi import BODY, ETAG, PathSkillName, documented, optional_string
from skill_credits.skills import service
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.schemas import (
    Catalogue,
    Skill,
    SkillCreate,
    SkillHistory,
    SkillList,
    SkillPatch,
    catalogue_item,
)
from skill_credits.validation import path_skill_name


class CatalogueController(Controller):
    path = "/v1/skills"
    tags = ["skills"]

    @get("/", summary="The live catalogue: active skills", **documented("listCatalogue"))
    async def catalogue(
        self, db: NamedDependency[Database], cache: NamedDependency[SkillCache]
    ) -> Catalogue:
        skills = await service.active_catalogue(db, cache)
        return Catalogue([catalogue_item(s) for s in skills])


class AdminSkillController(Controller):
    path = "/v1/admin/skills"
    tags = ["admin"]

    @get("/", summary="All skills, inactive included", **documented("listSkills", 403))
    async def list_skills(self, request: Request, db: NamedDependency[Database]) -> SkillList:
        require_admin(request)
        return SkillList(await service.list_all(db))

    @post(
        "/", summary="Create a skill", **documented("createSkill", *BODY, 403, 409, headers=(ETAG,))
    )
    async def create_skill(
        self,
        request: Request,
        data: JSONBody[SkillCreate],
        db: NamedDependency[Database],
        cache: NamedDependency[SkillCache],
    ) -> Response[Skill]:
        principal = require_admin(request)
        skill = await service.create(db, data, principal.name)
        await service.publish(db, cache, skill)
        return Response(skill, status_code=201, headers={"ETag": f'"{skill.version}"'})

    @get(
        "/{name:str}",
        summary="One skill, with its version as ETag",
        **documented("getSkill", 400, 403, 404, headers=(ETAG,)),
    )
    async def get_skill(
        self, request: Request, name: PathSkillName, db: NamedDependency[Database]
    ) -> Response[Skill]:
        path_skill_name(name)
        require_admin(request)
        skill = await service.get(db, name)
        return Response(skill, headers={"ETag": f'"{skill.version}"'})

    @patch(
        "/{name:str}",
        summary="Edit a skill (optional If-Match with its version)",
        **documented("updateSkill", *BODY, 403, 404, 412, headers=(ETAG,)),
    )
    async def patch_skill(
        self,
        request: Request,
        name: PathSkillName,
        data: JSONBody[SkillPatch],
        db: NamedDependency[Database],
        cache: NamedDependency[SkillCache],
        if_match: Annotated[
            str | None,
            HeaderParameter(
                name="If-Match",
                description='The version the change is based on: `"3"`, `3`, `W/"3"` or `*`',
                schema_extra=optional_string(),
            ),
        ] = None,
    ) -> Response[Skill]:
        path_skill_name(name)
        principal = require_admin(request)
        skill, _ = await service.update(db, name, data, principal.name, if_match)
        await service.publish(db, cache, skill)
        return Response(skill, headers={"ETag": f'"{skill.version}"'})

    @get(
        "/{name:str}/history",
        summary="Every edit of a skill, newest first",
        **documented("getSkillHistory", 400, 403, 404),
    )
    async def history(
        self, request: Request, name: PathSkillName, db: NamedDependency[Database]
    ) -> SkillHistory:
        path_skill_name(name)
        require_admin(request)
        _, edits = await service.history(db, name)
        return SkillHistory(edits)
