"""Server-rendered admin pages. Every change goes through the same services as the API."""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body, FromPath, QueryParameter
from litestar.response import Redirect, Template

from skill_credits.admin_ui.session import admin_session, start_session
from skill_credits.auth import principal_of, verify_token
from skill_credits.bodies import _field_and_message
from skill_credits.db import Database
from skill_credits.errors import ApiError, validation_error
from skill_credits.ledger import repository as ledger_repo
from skill_credits.ledger import service as ledger_service
from skill_credits.ledger.schemas import CreditIn, RefundIn
from skill_credits.skills import repository as skills_repo
from skill_credits.skills import service as skills_service
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.schemas import SkillCreate, SkillPatch
from skill_credits.validation import (
    SKILL_NAME_RE,
    SKILL_NAME_RULE,
    USER_ID_RE,
    USER_ID_RULE,
    check_urlencoded,
    plain_text,
)

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Db = NamedDependency[Database]
Cache = NamedDependency[SkillCache]
INTEGER = re.compile(r"-?\d{1,19}")


async def plain_inputs(request: Request) -> None:
    """``before_request`` of every admin page: one guard for what the forms pass on.

    A NUL or bytes that are not UTF-8 in the path, the query or a form field are a 400
    naming it, before any handler hands them to PostgreSQL (which refuses NUL in text).
    """
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise validation_error(name, "must not contain NUL")
    plain_text("path", (request.scope.get("raw_path") or b"").split(b"?", 1)[0])
    check_urlencoded(request.scope.get("query_string") or b"")
    if request.method == "POST":  # every admin form is url-encoded
        check_urlencoded(await request.body())


def _int_field(form: dict[str, str], field: str, errors: dict[str, str], rule: str) -> int | None:
    raw = form.get(field, "").strip()
    if not INTEGER.fullmatch(raw):
        errors[field] = rule
        return None
    return int(raw)


def _struct_errors(exc: msgspec.ValidationError) -> dict[str, str]:
    field, message = _field_and_message(exc)
    if field == "name":
        message = f"System name must be {SKILL_NAME_RULE}."
    return {field: message}


def see_other(url: str) -> Redirect:
    """Post/redirect/get: the browser follows with a GET."""
    return Redirect(url, status_code=303)


def _flash(request: Request, kind: str, message: str) -> None:
    request.session.setdefault("flash", []).append({"kind": kind, "message": message})


def _pop_flash(request: Request) -> list[dict[str, str]]:
    return request.session.pop("flash", []) if request.session else []


class LoginController(Controller):
    path = "/admin"
    include_in_schema = False

    @get("/login")
    async def login_page(self, request: Request) -> Template:
        return Template("login.html", context={"error": None})

    @post("/login")
    async def login(self, request: Request, data: Form, db: Db) -> Response:
        token = (data.get("api_key") or "").strip()
        principal = None
        key_id = None
        if token:
            async with db.autocommit.connect() as conn:
                principal = await verify_token(conn, token)
            key_id = token.split("_")[1] if principal else None
        if principal is None or not principal.is_admin or key_id is None:
            return Template(
                "login.html",
                context={"error": "That is not a live admin key."},
                status_code=401,
            )
        start_session(request, key_id, principal.name)
        return see_other("/admin/skills")

    @post("/logout", guards=[admin_session])
    async def logout(self, request: Request) -> Redirect:
        request.clear_session()
        return see_other("/admin/login")


class AdminPagesController(Controller):
    path = "/admin"
    guards = [admin_session]
    include_in_schema = False

    @get("/")
    async def home(self) -> Redirect:
        return see_other("/admin/skills")

    # ---- skills -------------------------------------------------------------------

    async def _skills_page(
        self,
        request: Request,
        db: Database,
        *,
        form: dict | None = None,
        errors: dict | None = None,
        status: int = 200,
        open_form: bool = False,
    ) -> Template:
        async with db.autocommit.connect() as conn:
            skills = await skills_repo.list_all(conn)
        return Template(
            "skills.html",
            context={
                "skills": skills,
                "form": form or {},
                "errors": errors or {},
                "open_form": open_form or bool(errors),
                "flash": _pop_flash(request),
                "admin": principal_of(request).name,
                "name_rule": SKILL_NAME_RULE,
            },
            status_code=status,
        )

    @get("/skills")
    async def skills(
        self, request: Request, db: Db, new: Annotated[str | None, QueryParameter()] = None
    ) -> Template:
        return await self._skills_page(request, db, open_form=new is not None)

    @post("/skills")
    async def create_skill(self, request: Request, data: Form, db: Db, cache: Cache) -> Response:
        errors: dict[str, str] = {}
        cost = _int_field(data, "cost", errors, "Cost must be a non-negative integer.")
        if cost is not None and not 0 <= cost <= 1_000_000_000:
            errors["cost"] = "Cost must be a non-negative integer up to 1 000 000 000."
        name = data.get("name", "").strip()
        if not SKILL_NAME_RE.fullmatch(name):
            errors["name"] = f"System name must be {SKILL_NAME_RULE}."
        skill_in = None
        if not errors:
            try:
                skill_in = msgspec.convert(
                    {
                        "name": name,
                        "display_name": data.get("display_name", "").strip(),
                        "description": data.get("description", "").strip() or None,
                        "cost": cost,
                    },
                    SkillCreate,
                )
            except msgspec.ValidationError as exc:
                errors = _struct_errors(exc)
        if errors or skill_in is None:
            return await self._skills_page(request, db, form=data, errors=errors, status=400)
        try:
            skill = await skills_service.create(db, skill_in, principal_of(request).name)
        except ApiError as exc:
            return await self._skills_page(
                request, db, form=data, errors={"name": exc.detail}, status=exc.status_code
            )
        await skills_service.publish(db, cache, skill)
        _flash(request, "ok", f"{skill.name} is live at {skill.cost} credits.")
        return see_other("/admin/skills")

    async def _edit(
        self,
        request: Request,
        db: Database,
        cache: SkillCache,
        name: str,
        version: str,
        changes: dict[str, Any],
    ) -> Redirect:
        try:
            patch = msgspec.convert(changes, SkillPatch)
            skill = await skills_service.update(
                db, name, patch, principal_of(request).name, f'"{version}"'
            )
        except msgspec.ValidationError as exc:
            _flash(request, "error", f"{name}: {_field_and_message(exc)[1]}")
            return see_other("/admin/skills")
        except ApiError as exc:
            if exc.code == "version_conflict":
                _flash(
                    request,
                    "error",
                    f"{name} was changed meanwhile by someone else; nothing was saved."
                    " Check the current values below and try again.",
                )
            else:
                _flash(request, "error", exc.detail)
            return see_other("/admin/skills")
        await skills_service.publish(db, cache, skill)
        _flash(request, "ok", f"{name} saved (version {skill.version}).")
        return see_other("/admin/skills")

    @post("/skills/{name:str}/cost")
    async def edit_cost(
        self, request: Request, name: FromPath[str], data: Form, db: Db, cache: Cache
    ) -> Redirect:
        errors: dict[str, str] = {}
        cost = _int_field(data, "cost", errors, "a non-negative integer")
        if cost is None or cost < 0:
            _flash(request, "error", f"{name}: cost must be a non-negative integer.")
            return see_other("/admin/skills")
        return await self._edit(request, db, cache, name, data.get("version", ""), {"cost": cost})

    @get("/skills/{name:str}/disable")
    async def confirm_disable(self, request: Request, name: FromPath[str], db: Db) -> Template:
        async with db.autocommit.connect() as conn:
            skill = await skills_repo.get(conn, name) if SKILL_NAME_RE.fullmatch(name) else None
        if skill is None:
            raise ApiError(404, "skill_not_found", f"no skill named {name}")
        return Template("confirm_disable.html", context={"skill": skill})

    @post("/skills/{name:str}/active")
    async def set_active(
        self, request: Request, name: FromPath[str], data: Form, db: Db, cache: Cache
    ) -> Redirect:
        active = data.get("is_active") == "true"
        return await self._edit(
            request, db, cache, name, data.get("version", ""), {"is_active": active}
        )

    @get("/skills/{name:str}/history")
    async def history(self, request: Request, name: FromPath[str], db: Db) -> Template:
        async with db.autocommit.connect() as conn:
            skill = await skills_repo.get(conn, name) if SKILL_NAME_RE.fullmatch(name) else None
            if skill is None:
                raise ApiError(404, "skill_not_found", f"no skill named {name}")
            edits = await skills_repo.history(conn, skill.id)
        return Template("history.html", context={"skill": skill, "edits": edits})

    # ---- users --------------------------------------------------------------------

    @get("/users")
    async def users(
        self,
        request: Request,
        db: Db,
        user_id: Annotated[str | None, QueryParameter(max_length=200)] = None,
        cursor: Annotated[str | None, QueryParameter(max_length=64)] = None,
    ) -> Template:
        context: dict[str, Any] = {
            "query": user_id or "",
            "user": None,
            "items": [],
            "next_cursor": None,
            "error": None,
            "flash": _pop_flash(request),
            "idem": uuid.uuid4().hex,
        }
        status = 200
        if user_id:
            before = ledger_repo.decode_cursor(cursor) if cursor else None
            if not USER_ID_RE.fullmatch(user_id):
                context["error"] = f"A user id is {USER_ID_RULE}."
                status = 400
            elif cursor and before is None:
                context["error"] = "That page link is not valid."
                status = 400
            else:
                async with db.autocommit.connect() as conn:
                    user = await ledger_repo.get_user(conn, user_id)
                    if user is None:
                        context["error"] = f"No user {user_id} (granting credits creates one)."
                        context["new_user"] = user_id
                    else:
                        items, next_cursor = await ledger_repo.page(conn, user_id, 25, before, None)
                        refunded = await ledger_repo.refunded_among(conn, [t.id for t in items])
                        context.update(
                            user=user, items=items, next_cursor=next_cursor, refunded=refunded
                        )
        return Template("users.html", context=context, status_code=status)

    @post("/users/{user_id:str}/credits")
    async def credit(
        self, request: Request, user_id: FromPath[str], data: Form, db: Db
    ) -> Redirect:
        back = f"/admin/users?user_id={user_id}"
        if not USER_ID_RE.fullmatch(user_id):
            _flash(request, "error", f"A user id is {USER_ID_RULE}.")
            return see_other("/admin/users")
        errors: dict[str, str] = {}
        amount = _int_field(data, "amount", errors, "")
        try:
            if amount is None:
                raise ValueError("amount must be a whole number")
            body = msgspec.convert(
                {
                    "amount": amount,
                    "type": data.get("type", "GRANT"),
                    "description": data.get("description", "").strip() or None,
                },
                CreditIn,
            )
        except (msgspec.ValidationError, ValueError) as exc:
            message = (
                _field_and_message(exc)[1] if isinstance(exc, msgspec.ValidationError) else str(exc)
            )
            _flash(request, "error", f"Not saved: {message}.")
            return see_other(back)
        key = (data.get("idem") or "")[:64] or None
        digest = ledger_service.request_hash("POST", f"/v1/users/{user_id}/credits", body, key)
        try:
            async with db.autocommit.connect() as conn:
                written = await ledger_service.add_credits(conn, user_id, body, key, digest)
        except ApiError as exc:
            _flash(request, "error", f"Not saved: {exc.detail}.")
            return see_other(back)
        tx = written.transaction
        _flash(request, "ok", f"{tx.type} of {tx.amount:+d} saved; balance {tx.balance_after}.")
        return see_other(back)

    @post("/transactions/{tx_id:str}/refund")
    async def refund(self, request: Request, tx_id: FromPath[str], data: Form, db: Db) -> Redirect:
        user_id = data.get("user_id", "")
        back = (
            f"/admin/users?user_id={user_id}" if USER_ID_RE.fullmatch(user_id) else "/admin/users"
        )
        try:
            tx_uuid = str(uuid.UUID(tx_id))
        except ValueError:
            _flash(request, "error", "That is not a transaction id.")
            return see_other(back)
        body = RefundIn(description=(data.get("description") or "").strip()[:500] or None)
        key = (data.get("idem") or "")[:64] or None
        digest = ledger_service.request_hash(
            "POST", f"/v1/transactions/{tx_uuid}/refund", body, key
        )
        try:
            async with db.autocommit.connect() as conn:
                written = await ledger_service.refund(conn, tx_uuid, body, key, digest)
        except ApiError as exc:
            _flash(request, "error", f"Not refunded: {exc.detail}.")
            return see_other(back)
        _flash(request, "ok", f"Refunded {written.transaction.amount} credits.")
        return see_other(back)
