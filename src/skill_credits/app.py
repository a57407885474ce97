"""create_app(settings): the one place where plugins, routes and resources are wired."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar, Request, Response, Router
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from litestar.stores.redis import RedisStore
from litestar.template.config import TemplateConfig

from skill_credits.admin_ui import present
from skill_credits.admin_ui.pages.login import LoginController
from skill_credits.admin_ui.pages.shared import plain_inputs
from skill_credits.admin_ui.pages.skills import SkillPagesController
from skill_credits.admin_ui.pages.usage import UsagePagesController
from skill_credits.admin_ui.pages.users import UserPagesController
from skill_credits.admin_ui.session import (
    LoginRequired,
    csrf_middleware,
    login_rate_limit,
    session_config,
)
from skill_credits.auth import KeyCache
from skill_credits.bodies import api_request
from skill_credits.db import Database
from skill_credits.errors import internal_error_handler, problem_details_plugin
from skill_credits.events.endpoints import EventController
from skill_credits.health import healthz, readyz
from skill_credits.ledger.batch import Batches
from skill_credits.ledger.endpoints import HoldController, LedgerController
from skill_credits.ledger.limited import LimitedUsers
from skill_credits.limits.endpoints import LimitController
from skill_credits.observability import (
    RequestIdMiddleware,
    configure_logging,
    count_refused_charge,
    prometheus,
)
from skill_credits.recharges.endpoints import AutoRechargeController, RechargeController
from skill_credits.settings import Settings
from skill_credits.skills import service as skills_service
from skill_credits.skills.cache import SkillCache, create_redis
from skill_credits.skills.endpoints import AdminSkillController, CatalogueController
from skill_credits.usage.endpoints import UsageController

log = logging.getLogger(__name__)
REPAIR_INTERVAL_SECONDS = 1.0
ADMIN_UI = Path(__file__).parent / "admin_ui"
HTML_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'none'; object-src 'none'; base-uri 'none';"
        " form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def provide_db(state: State) -> Database:
    return state.db


def provide_cache(state: State) -> SkillCache:
    return state.cache


async def _bind_cache(db: Database, cache: SkillCache, prefix: str, within: float) -> None:
    """Bind the cache to the database's identity; a database that does not answer now
    leaves it unbound (every read a miss) for the repair loop to bind later."""
    try:
        async with asyncio.timeout(within):
            await skills_service.bind_cache(db, cache, prefix)
    except Exception as exc:  # noqa: BLE001 - try again next round
        log.warning("skill cache not bound yet: %s", exc.__class__.__name__)


async def _repair_cache_forever(db: Database, cache: SkillCache, prefix: str) -> None:
    """Writes that missed Redis while it was away are made again once it answers."""
    while True:
        await asyncio.sleep(REPAIR_INTERVAL_SECONDS)
        if not cache.bound:
            await _bind_cache(db, cache, prefix, REPAIR_INTERVAL_SECONDS)
        if cache.bound and cache.needs_repair and await cache.ping():
            try:
                await skills_service.republish_all(db, cache)
            except Exception:  # noqa: BLE001 - try again next round
                cache.needs_repair = True


def login_redirect(_: Request, __: LoginRequired) -> Response:
    return Redirect("/admin/login", status_code=303)


async def html_security_headers(response: Response) -> Response:
    response.headers.update(HTML_SECURITY_HEADERS)
    return response


def create_app(settings: Settings) -> Litestar:
    redis = create_redis(settings.redis_url, settings.redis_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        db = Database(settings)
        await db.start()
        cache = SkillCache(
            redis,
            None,  # bound to the database below
            timeout=settings.redis_timeout,
            retry_after=settings.redis_retry_after,
            remember=settings.cache_remember,
        )
        app.state.db, app.state.cache = db, cache
        app.state.key_cache = KeyCache()
        app.state.limited_users = LimitedUsers()
        app.state.batches = (
            Batches.of(
                db,
                max_items=settings.charge_batch_max,
                slots=settings.charge_batch_slots,
                wait=settings.db_pool_timeout,
            )
            if settings.charge_batch_max > 1
            else None
        )
        await _bind_cache(db, cache, settings.redis_prefix, settings.db_connect_timeout)
        repair = asyncio.create_task(_repair_cache_forever(db, cache, settings.redis_prefix))
        # What the worker built to serve (modules, the app, its routes) lives as long as the
        # process: out of the collector's sight, so a full collection scans only what
        # requests made since, not the whole heap (it had paused a busy worker ~60 ms).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            repair.cancel()
            await cache.close()
            await db.dispose()

    api = Router(
        path="/",
        before_request=api_request,
        route_handlers=[
            LedgerController,
            HoldController,
            LimitController,
            AutoRechargeController,
            RechargeController,
            CatalogueController,
            AdminSkillController,
            EventController,
            UsageController,
        ],
        security=[{"BearerToken": []}],
    )
    admin_ui = Router(
        path="/",
        route_handlers=[
            LoginController,
            SkillPagesController,
            UserPagesController,
            UsagePagesController,
        ],
        before_request=plain_inputs,
        middleware=[
            session_config().middleware,
            login_rate_limit(settings.login_attempts_per_minute).middleware,
            csrf_middleware(settings.secret_key),  # innermost: refused posts still count
        ],
        after_request=html_security_headers,
        include_in_schema=False,
    )
    metrics_config, metrics_controller = prometheus()
    static = create_static_files_router(
        path="/static", directories=[ADMIN_UI / "static"], include_in_schema=False
    )
    return Litestar(
        route_handlers=[api, admin_ui, static, healthz, readyz, metrics_controller],
        middleware=[RequestIdMiddleware(), metrics_config.middleware],
        lifespan=[lifespan],
        dependencies={
            "db": Provide(provide_db, sync_to_thread=False),
            "cache": Provide(provide_cache, sync_to_thread=False),
        },
        plugins=[problem_details_plugin()],
        after_exception=[count_refused_charge],
        exception_handlers={Exception: internal_error_handler, LoginRequired: login_redirect},
        stores={
            "sessions": RedisStore(redis, namespace=f"{settings.redis_prefix}sessions"),
            "rate_limit": RedisStore(redis, namespace=f"{settings.redis_prefix}rate_limit"),
        },
        template_config=TemplateConfig(
            directory=ADMIN_UI / "templates",
            engine=JinjaTemplateEngine,
            engine_callback=present.configure,
        ),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="skill-credits",
            version="1.0.0",
            description="Prepaid credits for paid AI tools (skills).",
            path="/schema",
            components=Components(
                security_schemes={
                    "BearerToken": SecurityScheme(
                        type="http", scheme="bearer", description="An API key"
                    )
                }
            ),
        ),
        logging_config=None,  # logging is the process's: JSON lines (observability.py)
        debug=False,
    )


def create_app_from_env() -> Litestar:
    """Factory for uvicorn workers: each process reads its settings from the environment."""
    settings = Settings.from_env()
    configure_logging(settings.log_level)
    return create_app(settings)
