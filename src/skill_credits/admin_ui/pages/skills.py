"""The skills page (the admin's home): create a skill, change its cost, disable or
enable it, and its history of edits."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath
from litestar.response import Redirect, Template

from skill_credits.admin_ui import forms, present
from skill_credits.admin_ui.pages.confirmation import confirm
from skill_credits.admin_ui.pages.shared import Cache, Db, Form, flash, pop_flash, see_other
from skill_credits.admin_ui.session import admin_session
from skill_credits.auth import principal_of
from skill_credits.db import Database
from skill_credits.errors import ApiError, skill_not_found
from skill_credits.skills import service as skills_service
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.schemas import SkillPatch
from skill_credits.validation import SKILL_NAME_RE


class SkillPagesController(Controller):
    path = "/admin"
    guards = [admin_session]
    include_in_schema = False

    @get("/")
    async def home(self) -> Redirect:
        return see_other("/admin/skills")

    async def _skills_page(
        self,
        request: Request,
        db: Database,
        *,
        form: dict | None = None,
        errors: dict | None = None,
        cost_errors: dict | None = None,
        status: int = 200,
    ) -> Template:
        skills = await skills_service.list_all(db)
        return Template(
            "skills.html",
            context={
                "skills": skills,
                "form": form or {},
                "errors": errors or {},
                "cost_errors": cost_errors or {},
                "flash": pop_flash(request),
            },
            status_code=status,
        )

    @get("/skills")
    async def skills(self, request: Request, db: Db) -> Template:
        return await self._skills_page(request, db)

    @post("/skills")
    async def create_skill(self, request: Request, data: Form, db: Db, cache: Cache) -> Response:
        skill_in, errors = forms.skill(data)
        if skill_in is None:
            return await self._skills_page(request, db, form=data, errors=errors, status=400)
        try:
            skill = await skills_service.create(db, skill_in, principal_of(request).name)
        except ApiError as exc:
            errors = {"name": forms.sentence(exc.detail)}
            return await self._skills_page(
                request, db, form=data, errors=errors, status=exc.status_code
            )
        await skills_service.publish(db, cache, skill)
        flash(request, "ok", f"{skill.name} is live at {skill.cost} credits.")
        return see_other("/admin/skills")

    async def _edit(
        self,
        request: Request,
        db: Database,
        cache: SkillCache,
        name: str,
        version: str,
        patch: SkillPatch,
    ) -> Redirect:
        try:
            skill, changes = await skills_service.update(
                db, name, patch, principal_of(request).name, f'"{version}"'
            )
        except ApiError as exc:
            if exc.code == "version_conflict":
                flash(
                    request,
                    "error",
                    f"{name} was changed meanwhile by someone else; nothing was saved."
                    " Check the current values below and try again.",
                )
            else:
                flash(request, "error", forms.sentence(exc.detail))
            return see_other("/admin/skills")
        await skills_service.publish(db, cache, skill)
        if changes:
            saved = present.changes_text(changes)
            flash(request, "ok", f"{name} saved (version {skill.version}): {saved}.")
        else:
            flash(request, "ok", f"{name}: nothing to save, it was like that already.")
        return see_other("/admin/skills")

    @post("/skills/{name:str}/cost")
    async def edit_cost(
        self, request: Request, name: FromPath[str], data: Form, db: Db, cache: Cache
    ) -> Response:
        patch, errors = forms.cost(data)
        if patch is None:
            return await self._skills_page(
                request, db, cost_errors={name: errors["cost"]}, status=400
            )
        return await self._edit(request, db, cache, name, data.get("version", ""), patch)

    @get("/skills/{name:str}/disable")
    async def confirm_disable(self, request: Request, name: FromPath[str], db: Db) -> Template:
        skill = await skills_service.get(db, _skill_name(name))
        return confirm(
            title=f"Disable {skill.name}?",
            consequence=(
                f"Every charge of {skill.display_name} will be refused with 403 skill_disabled"
                " from the next request on, until it is enabled again."
            ),
            facts={"Display name": skill.display_name, "Cost": str(skill.cost)},
            action=f"/admin/skills/{skill.name}/active",
            fields={"version": str(skill.version), "is_active": "false"},
            button=f"Yes, disable {skill.name}",
            cancel="/admin/skills",
        )

    @post("/skills/{name:str}/active")
    async def set_active(
        self, request: Request, name: FromPath[str], data: Form, db: Db, cache: Cache
    ) -> Redirect:
        patch = SkillPatch(is_active=data.get("is_active") == "true")
        return await self._edit(request, db, cache, name, data.get("version", ""), patch)

    @get("/skills/{name:str}/history")
    async def history(self, request: Request, name: FromPath[str], db: Db) -> Template:
        skill, edits = await skills_service.history(db, _skill_name(name))
        return Template("history.html", context={"skill": skill, "edits": edits})


def _skill_name(name: str) -> str:
    """A skill name from the path: a name no skill can have is a 404 here, without a query."""
    if not SKILL_NAME_RE.fullmatch(name):
        raise skill_not_found(name)
    return name
