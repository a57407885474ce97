"""The `skill-credits` command line.

Failures a user is expected to meet (no PostgreSQL, no database or schema yet, a key
name in use) are answered in one line on stderr with exit status 1, saying what to do;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from urllib.parse import urlsplit

from skill_credits.settings import Settings

KEY_NAME_LENGTH = 100  # api_keys.name's CHECK


class Refused(Exception):
    """An expected failure; its message is the line the user reads."""


async def _with_connection(settings: Settings, work):
    from skill_credits.db import Database

    db = Database(settings)
    try:
        async with db.transaction() as conn:
            return await work(conn)
    finally:
        await db.dispose()


def cmd_migrate(settings: Settings, _: argparse.Namespace) -> int:
    from skill_credits.migrate import migrate

    migrate(settings)
    print("database is at the newest schema")
    return 0


def cmd_keys_create(settings: Settings, args: argparse.Namespace) -> int:
    from sqlalchemy.exc import IntegrityError

    from skill_credits.auth import create_key
    from skill_credits.db.failures import unique_violation

    if not 1 <= len(args.name) <= KEY_NAME_LENGTH:
        raise Refused(f"a key name has 1-{KEY_NAME_LENGTH} characters")
    try:
        key = asyncio.run(_with_connection(settings, lambda c: create_key(c, args.name, args.role)))
    except IntegrityError as exc:
        if not unique_violation(exc, "api_keys_live_name"):
            raise
        raise Refused(
            f"a live key named {args.name!r} exists: revoke it first"
            f" (skill-credits keys revoke {args.name}) or choose another name"
        ) from None
    print(f"created {key.role} key {key.name!r}; it is shown once, store it now:")
    print(key.token)
    return 0


def _outcome(done: bool, said: str, not_found: str) -> int:
    """Exit status 0 with ``said`` when a command found what it names, else 1."""
    if done:
        print(said)
        return 0
    print(not_found, file=sys.stderr)
    return 1


def cmd_keys_revoke(settings: Settings, args: argparse.Namespace) -> int:
    from skill_credits.auth import revoke_key

    done = asyncio.run(_with_connection(settings, lambda c: revoke_key(c, args.name)))
    return _outcome(done, f"revoked key {args.name!r}", f"no live key named {args.name!r}")


def cmd_reconcile(settings: Settings, _: argparse.Namespace) -> int:
    from skill_credits.ledger.repository import reconcile

    problems = asyncio.run(_with_connection(settings, reconcile))
    for line in problems:
        print(line)
    if problems:
        print(f"{len(problems)} difference(s) found", file=sys.stderr)
        return 1
    print("every balance matches its log")
    return 0


async def _bootstrap_admin(settings: Settings) -> str | None:
    """On first start, with no live admin key, make one so a newcomer can log in."""
    from skill_credits.auth import create_key, has_admin_key

    async def work(conn):
        if await has_admin_key(conn):
            return None
        return (await create_key(conn, "admin", "admin")).token

    return await _with_connection(settings, work)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    import secrets
    import tempfile

    import uvicorn

    # Workers share one secret for the admin UI's CSRF tokens, and one directory for
    # their Prometheus counters, so a scrape of any worker reports them all. The worker
    # processes uvicorn starts learn both only through their environment.
    if not settings.secret_key:
        os.environ["SECRET_KEY"] = secrets.token_hex(32)
    if not settings.metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="sc-metrics-")
    token = asyncio.run(_bootstrap_admin(settings))
    if token:
        print("No admin key existed, so one named 'admin' was created. It is shown once:")
        print(f"  {token}")
    workers = f"{args.workers} worker{'s' if args.workers != 1 else ''}"
    print(f"serving on http://{args.host}:{args.port} ({workers}); Ctrl-C stops it", flush=True)
    uvicorn.run(
        "skill_credits.app:create_app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=settings.log_level,
        log_config=None,  # each worker logs JSON lines (observability.configure_logging)
        access_log=False,
        # uvicorn would believe X-Forwarded-* from 127.0.0.1 by default: only from the
        # proxies the operator names (FORWARDED_ALLOW_IPS), and from none without it
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
    )
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from skill_credits.db import Database
    from skill_credits.events.worker import WorkerConfig, main

    config = WorkerConfig(
        max_attempts=settings.webhook_max_attempts,
        backoff_base=settings.webhook_backoff_seconds,
        poll_interval=settings.webhook_poll_seconds,
        usage_roll_interval=settings.usage_roll_seconds,
    )
    asyncio.run(main(Database(settings), config))
    return 0


def cmd_usage_roll(settings: Settings, args: argparse.Namespace) -> int:
    from skill_credits.db import Database
    from skill_credits.usage.service import rebuild, roll

    async def run() -> object:
        db = Database(settings)
        try:
            return await (rebuild(db) if args.rebuild else roll(db))
        finally:
            await db.dispose()

    mark = asyncio.run(run())
    print(f"usage rolled up to {mark}" if mark is not None else "usage: nothing rolled up")
    return 0


def cmd_webhooks_add(settings: Settings, args: argparse.Namespace) -> int:
    from skill_credits.events.repository import add_endpoint

    _, secret = asyncio.run(_with_connection(settings, lambda c: add_endpoint(c, args.url)))
    print(f"events are now delivered to {args.url}; verify them with this signing secret:")
    print(secret)
    return 0


def cmd_webhooks_remove(settings: Settings, args: argparse.Namespace) -> int:
    from skill_credits.events.repository import remove_endpoint

    done = asyncio.run(_with_connection(settings, lambda c: remove_endpoint(c, args.url)))
    return _outcome(done, f"stopped delivering to {args.url}", f"no live endpoint {args.url}")


def cmd_webhooks_list(settings: Settings, _: argparse.Namespace) -> int:
    from skill_credits.events.repository import list_endpoints

    for r in asyncio.run(_with_connection(settings, list_endpoints)):
        state = "live" if r.active else "removed"
        print(f"{r.url}  {state}  pending={r.pending} delivered={r.delivered} dead={r.dead}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skill-credits", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="create the database if missing, upgrade to head").set_defaults(
        run=cmd_migrate
    )
    serve = sub.add_parser("serve", help="serve the HTTP API")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.set_defaults(run=cmd_serve)
    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="keys", required=True)
    create = keys.add_parser("create", help="create a key; prints it on the last line")
    create.add_argument("--role", choices=("admin", "service"), required=True)
    create.add_argument("--name", required=True)
    create.set_defaults(run=cmd_keys_create)
    revoke = keys.add_parser("revoke", help="revoke the live key with this name")
    revoke.add_argument("name")
    revoke.set_defaults(run=cmd_keys_revoke)
    sub.add_parser(
        "reconcile", help="check balances against the log; exit 1 if any differ"
    ).set_defaults(run=cmd_reconcile)
    sub.add_parser(
        "worker", help="deliver events to the webhook endpoints; write off expired grants"
    ).set_defaults(run=cmd_worker)
    usage_roll = sub.add_parser(
        "usage-roll", help="roll the log up for usage answers (the worker does it by itself)"
    )
    usage_roll.add_argument(
        "--rebuild", action="store_true", help="forget the rollups and build them from the log"
    )
    usage_roll.set_defaults(run=cmd_usage_roll)
    hooks = sub.add_parser("webhooks", help="manage webhook endpoints").add_subparsers(
        dest="webhooks", required=True
    )
    add = hooks.add_parser("add", help="deliver every event to URL; prints its signing secret")
    add.add_argument("url")
    add.set_defaults(run=cmd_webhooks_add)
    remove = hooks.add_parser("remove", help="stop delivering to URL")
    remove.add_argument("url")
    remove.set_defaults(run=cmd_webhooks_remove)
    hooks.add_parser("list", help="endpoints and their delivery counts").set_defaults(
        run=cmd_webhooks_list
    )
    return p


def explain(exc: BaseException, settings: Settings) -> str | None:
    """The line that answers an expected failure; None for anything else."""
    import asyncpg
    from sqlalchemy.exc import DBAPIError

    from skill_credits.db.failures import is_unavailable, sqlstate

    if isinstance(exc, Refused):
        return str(exc)
    url = urlsplit(settings.database_url)
    database = url.path.lstrip("/")
    state = sqlstate(exc) if isinstance(exc, DBAPIError) else getattr(exc, "sqlstate", None)
    if state == asyncpg.InvalidCatalogNameError.sqlstate:
        return f"database {database!r} does not exist: run `skill-credits migrate`"
    if state == asyncpg.UndefinedTableError.sqlstate:
        return f"database {database!r} has no schema yet: run `skill-credits migrate`"
    if is_unavailable(exc):
        reason = str(getattr(exc, "orig", None) or exc) or type(exc).__name__
        return (
            f"PostgreSQL at {url.hostname}:{url.port or 5432} is not answering"
            f" ({reason.splitlines()[0]}); is it running, and is DATABASE_URL right?"
        )
    return None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    settings = Settings.from_env()
    try:
        return args.run(settings, args)
    except Exception as exc:
        said = explain(exc, settings)
        if said is None:
            raise
        print(f"skill-credits: {said}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
