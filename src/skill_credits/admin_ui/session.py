"""Admin login: an admin API key exchanged for a server-side session in Redis.

The session holds the key's id, never the key. Every page re-reads that key's row, so
a revoked key logs its sessions out on their next request. Logging in always starts a
new session id (no session fixation). Only a login stores a session: an anonymous
visitor costs Redis nothing. The cookie is ``Secure`` whenever the page was served
over HTTPS (directly, or through a proxy named in FORWARDED_ALLOW_IPS).
"""

from __future__ import annotations

import secrets
from typing import Any

from litestar.config.csrf import CSRFConfig
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie, MutableScopeHeaders
from litestar.handlers.base import BaseRouteHandler
from litestar.middleware import DefineMiddleware
from litestar.middleware.csrf import CSRFMiddleware
from litestar.middleware.rate_limit import RateLimitConfig
from litestar.middleware.session.server_side import (
    ServerSideSessionBackend,
    ServerSideSessionConfig,
)
from litestar.types import Empty, Message, ScopeSession

from skill_credits.auth import Principal, live_admin

ROTATE = "skill_credits.rotate_session"
SESSION_COOKIE = "sc_admin_session"


class LoginRequired(Exception):
    """Raised by the page guard; answered with a redirect to /admin/login."""


class RotatingSessionBackend(ServerSideSessionBackend):
    def get_session_id(self, connection: ASGIConnection) -> str:
        if connection.scope.get(ROTATE):
            state = connection.scope.setdefault("state", {})
            if "sc_new_session_id" not in state:
                state["sc_new_session_id"] = self.generate_session_id()
            return state["sc_new_session_id"]
        return super().get_session_id(connection)

    async def store_in_message(
        self, scope_session: ScopeSession, message: Message, connection: ASGIConnection
    ) -> None:
        """Litestar's, but an empty session is never stored (it forgets the one the
        cookie named, if any), and the cookie is Secure on HTTPS."""
        had_cookie = bool(connection.cookies.get(self.config.key))
        empty = scope_session is Empty or not scope_session
        if empty and not had_cookie:
            return
        store = self.config.get_store_from_app(connection.scope["app"])
        session_id = self.get_session_id(connection)
        cookie = Cookie(
            key=self.config.key,
            value="null" if empty else session_id,
            path=self.config.path,
            max_age=0 if empty else self.config.max_age,
            secure=self.config.secure or connection.scope.get("scheme") == "https",
            httponly=self.config.httponly,
            samesite=self.config.samesite,
            domain=self.config.domain,
        )
        if empty:
            await self.delete(session_id, store=store)
        else:
            await self.set(session_id, self.serialize_data(scope_session, connection.scope), store)
        MutableScopeHeaders.from_message(message).add("Set-Cookie", cookie.to_header(header=""))


class AdminSessionConfig(ServerSideSessionConfig):
    _backend_class = RotatingSessionBackend


def session_config() -> AdminSessionConfig:
    return AdminSessionConfig(
        key=SESSION_COOKIE,
        store="sessions",
        max_age=8 * 3600,
        httponly=True,
        samesite="strict",
        path="/admin",
    )


def csrf_middleware(secret_key: str) -> DefineMiddleware:
    """CSRF protection of the admin pages' forms, on the admin router only: the API's
    callers send bearer tokens, not cookies, and a middleware that skips /v1 by path
    still costs every charge (BENCHMARKS.md). No secret set: one per process."""
    config = CSRFConfig(
        secret=secret_key or secrets.token_hex(32),
        cookie_name="sc_csrf",
        cookie_path="/admin",
        cookie_httponly=True,
        cookie_samesite="strict",
    )
    return DefineMiddleware(CSRFMiddleware, config=config)


def is_login_attempt(request: Any) -> bool:
    return request.method == "POST" and request.url.path == "/admin/login"


def login_rate_limit(attempts_per_minute: int) -> RateLimitConfig:
    """Brute-force guard: per client address, counted in Redis across workers."""
    return RateLimitConfig(
        rate_limit=("minute", attempts_per_minute),
        store="rate_limit",
        check_throttle_handler=is_login_attempt,
    )


def start_session(connection: ASGIConnection, key_id: str, name: str) -> None:
    connection.scope[ROTATE] = True
    connection.set_session({"key_id": key_id, "name": name})


async def _live_admin(connection: ASGIConnection, key_id: Any) -> Principal | None:
    if not isinstance(key_id, str):
        return None
    async with connection.app.state.db.connect() as conn:
        return await live_admin(conn, key_id)


async def admin_session(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    """Guard of every admin page: a session whose admin key is still live."""
    session = connection.scope.get("session") or {}
    principal = await _live_admin(connection, session.get("key_id"))
    if principal is None:
        raise LoginRequired
    connection.scope["auth"] = principal
