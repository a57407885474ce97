"""Settings, read once from the environment and passed in explicitly."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

DEFAULT_DATABASE_URL = "postgresql://localhost:5432/skill_credits"
DEFAULT_REDIS_URL = "redis://localhost:6379/0"


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str = DEFAULT_REDIS_URL
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

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            database_url=env.get("DATABASE_URL", DEFAULT_DATABASE_URL),
            redis_url=env.get("REDIS_URL", DEFAULT_REDIS_URL),
            redis_prefix=env.get("REDIS_PREFIX", "skill_credits:"),
            redis_timeout=float(env.get("REDIS_TIMEOUT", "0.1")),
            cache_remember=float(env.get("CACHE_REMEMBER_SECONDS", "1.0")),
            db_pool_size=int(env.get("DB_POOL_SIZE", "10")),
            db_fast_pool_size=int(env.get("DB_FAST_POOL_SIZE", "10")),
            secret_key=env.get("SECRET_KEY", ""),
            login_attempts_per_minute=int(env.get("LOGIN_ATTEMPTS_PER_MINUTE", "10")),
            forwarded_allow_ips=env.get("FORWARDED_ALLOW_IPS", "").strip(),
        )

    @property
    def asyncpg_dsn(self) -> str:
        """DATABASE_URL in the form asyncpg wants (the hot-path pool)."""
        return "postgresql://" + self.sqlalchemy_url.partition("://")[2]

    @property
    def sqlalchemy_url(self) -> str:
        """DATABASE_URL in the form SQLAlchemy's asyncpg dialect wants."""
        scheme, sep, rest = self.database_url.partition("://")
        if not sep:
            raise ValueError(f"DATABASE_URL is not a URL: {self.database_url!r}")
        return f"postgresql+asyncpg://{rest}"
