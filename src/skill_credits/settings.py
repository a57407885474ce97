"""Settings, read once from the environment and passed in explicitly.

This is the only module that reads the environment (``ENV`` names every variable); each
default is written once, as the field's default. ``serve`` writes two variables for its
worker processes (cli.py), which read them here like any other.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = "postgresql://localhost:5432/skill_credits"
    redis_url: str = "redis://localhost:6379/0"
    # Every Redis key this process writes starts with this prefix (tests use their own).
    redis_prefix: str = "skill_credits:"
    # Upper bound of one Redis call; the contract allows a dead Redis to cost 250 ms at most.
    redis_timeout: float = 0.1
    # How long Redis is skipped after it failed, before the next call tries it again.
    redis_retry_after: float = 1.0
    # How long a worker reuses a skill it read from Redis before it asks Redis again. Any
    # value is safe for money (the charge statement checks the version); it bounds how
    # long a worker's charges may find their hint behind an edit (one more round trip).
    cache_remember: float = 1.0
    # PostgreSQL: connect/checkout bounds keep "database down" answers under 2 s.
    # A fixed pool: overflow connections would be opened and closed under load.
    db_pool_size: int = 10
    db_max_overflow: int = 0
    # The asyncpg pool of the charge hot path (db.Database.statements).
    db_fast_pool_size: int = 10
    db_connect_timeout: float = 1.0
    # Waiting for a free connection (contention only; a dead server fails at connect):
    # bounded under the contract's 2 s for a 503.
    db_pool_timeout: float = 1.9
    db_command_timeout: float = 10.0
    # Charges that arrive while a worker's charge calls are out go together in the next
    # call (one round trip, one commit): at most this many a call. 1 turns batching off.
    charge_batch_max: int = 64
    # How many charge calls (batches) one worker has out at once.
    charge_batch_slots: int = 2
    max_body_bytes: int = 64 * 1024
    # Signs CSRF tokens of the admin UI; `serve` makes one per start when it is unset,
    # shared by its workers.
    secret_key: str = ""
    # Brute-force guard of /admin/login: attempts per client address per minute.
    login_attempts_per_minute: int = 10
    # Comma-separated addresses (or "*") of the reverse proxies whose X-Forwarded-For
    # and X-Forwarded-Proto `serve` believes. Empty: nobody's, so no one who can reach
    # the port can pick the client address the login limit counts.
    forwarded_allow_ips: str = ""

    # Python logging level of every process (`info` adds one access line per request).
    log_level: str = "warning"
    # The event delivery worker (`skill-credits worker`).
    webhook_max_attempts: int = 8
    webhook_backoff_seconds: float = 1.0
    webhook_poll_seconds: float = 0.5
    # how often the worker rolls the log up for usage answers (docs/usage.md)
    usage_roll_seconds: float = 10.0
    # Where the workers of `serve` keep their shared Prometheus counters (prometheus_client
    # reads the variable itself); `serve` makes one per start when it is unset.
    metrics_dir: str = ""

    def __post_init__(self) -> None:
        # no slot would ever send a write: every charge would wait, then answer 503
        if self.charge_batch_slots < 1:
            raise ValueError(f"CHARGE_BATCH_SLOTS must be at least 1: {self.charge_batch_slots}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The fields ``ENV`` names, from ``env`` (the process's environment by default);
        a variable that is not set leaves the field's default. Values are stripped."""
        env = os.environ if env is None else env
        kinds = {f.name: _PARSE[str(f.type)] for f in fields(cls)}
        return cls(
            **{field: kinds[field](env[var].strip()) for var, field in ENV.items() if var in env}
        )

    @property
    def asyncpg_dsn(self) -> str:
        """DATABASE_URL in the form asyncpg wants, at its first host."""
        return "postgresql://" + self.sqlalchemy_url.partition("://")[2]

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL in the form SQLAlchemy's asyncpg dialect wants, at its first host
        (where migrations run: a Citus cluster's coordinator)."""
        return "postgresql+asyncpg://" + self.dsns()[0].partition("://")[2]

    def dsns(self) -> list[str]:
        """DATABASE_URL once for each host it names, in its order. Several hosts are written
        as libpq takes them, ``postgresql://user@host1:5432,host2:5432/db``: the nodes of a
        Citus cluster, over which the service spreads its connections (db/pools.py)."""
        scheme, sep, rest = self.database_url.partition("://")
        if not sep:
            raise ValueError(f"DATABASE_URL is not a URL: {self.database_url!r}")
        netloc, slash, tail = rest.partition("/")
        userinfo, at, hosts = netloc.rpartition("@")
        login = f"{userinfo}{at}"
        return [f"postgresql://{login}{host}{slash}{tail}" for host in hosts.split(",")]


# environment variable -> Settings field
ENV = {
    "DATABASE_URL": "database_url",
    "REDIS_URL": "redis_url",
    "REDIS_PREFIX": "redis_prefix",
    "REDIS_TIMEOUT": "redis_timeout",
    "CACHE_REMEMBER_SECONDS": "cache_remember",
    "DB_POOL_SIZE": "db_pool_size",
    "DB_FAST_POOL_SIZE": "db_fast_pool_size",
    "DB_POOL_TIMEOUT": "db_pool_timeout",
    "DB_COMMAND_TIMEOUT": "db_command_timeout",
    "CHARGE_BATCH_MAX": "charge_batch_max",
    "CHARGE_BATCH_SLOTS": "charge_batch_slots",
    "SECRET_KEY": "secret_key",
    "LOGIN_ATTEMPTS_PER_MINUTE": "login_attempts_per_minute",
    "FORWARDED_ALLOW_IPS": "forwarded_allow_ips",
    "LOG_LEVEL": "log_level",
    "WEBHOOK_MAX_ATTEMPTS": "webhook_max_attempts",
    "WEBHOOK_BACKOFF_SECONDS": "webhook_backoff_seconds",
    "WEBHOOK_POLL_SECONDS": "webhook_poll_seconds",
    "USAGE_ROLL_SECONDS": "usage_roll_seconds",
    "PROMETHEUS_MULTIPROC_DIR": "metrics_dir",
}

_PARSE = {"str": str, "int": int, "float": float}
