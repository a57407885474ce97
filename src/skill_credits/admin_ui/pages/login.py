"""The login page: an admin API key exchanged for a session (session.py), and logout."""

from __future__ import annotations

from litestar import Controller, Request, Response, get, post
from litestar.response import Redirect, Template

from skill_credits.admin_ui.pages.shared import Db, Form, see_other
from skill_credits.admin_ui.session import admin_session, start_session
from skill_credits.auth import verify_token


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
        if token:
            async with db.connect() as conn:
                principal = await verify_token(conn, token)
        if principal is None or not principal.is_admin:
            return Template(
                "login.html",
                context={"error": "That is not a live admin key."},
                status_code=401,
            )
        start_session(request, principal.key_id, principal.name)
        return see_other("/admin/skills")

    @post("/logout", guards=[admin_session])
    async def logout(self, request: Request) -> Redirect:
        request.clear_session()
        return see_other("/admin/login")
