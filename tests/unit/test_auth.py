"""API keys: hashed at rest, compared in constant time, no early exit on an unknown id."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import pytest

from skill_credits import auth


class FakeConnection:
    """Answers the key lookup from a dict: a unit-test stand-in for PostgreSQL."""

    def __init__(self, rows: dict[str, SimpleNamespace]) -> None:
        self.rows = rows
        self.inserted: list[dict] = []

    async def execute(self, statement, params):
        if str(statement).startswith("INSERT"):
            self.inserted.append(params)
            return SimpleNamespace(rowcount=1)
        row = self.rows.get(params["id"])
        return SimpleNamespace(first=lambda: row)


@pytest.fixture
def comparisons(monkeypatch) -> list[tuple[bytes, bytes]]:
    seen: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", spy)
    return seen


async def test_only_the_hash_is_stored() -> None:
    conn = FakeConnection({})
    key = await auth.create_key(conn, "tool", "service")
    stored = conn.inserted[0]
    secret = key.token.split("_")[2]
    assert stored["hash"] == hashlib.sha256(secret.encode()).digest()
    assert secret not in repr(stored) and key.token not in repr(stored)


async def test_every_check_is_a_constant_time_comparison(comparisons) -> None:
    secret = "s3cr3t-value"
    row = SimpleNamespace(
        name="tool", role="service", key_hash=hashlib.sha256(secret.encode()).digest()
    )
    conn = FakeConnection({"abc123": row})
    assert await auth.verify_token(conn, f"sck_abc123_{secret}") == auth.Principal(
        name="tool", role="service", key_id="abc123"
    )
    assert await auth.verify_token(conn, "sck_abc123_wrong") is None
    # an unknown id still compares (against a dummy), so timing does not tell ids apart
    assert await auth.verify_token(conn, f"sck_unknown_{secret}") is None
    assert len(comparisons) == 3


def test_the_worker_cache_compares_in_constant_time_and_forgets(comparisons) -> None:
    cache = auth.KeyCache(limit=2)
    cache.put("abc", hashlib.sha256(b"pw").digest(), "tool", "admin")
    principal = cache.check("sck_abc_pw")
    assert principal is not None and not principal.confirmed and principal.is_admin
    assert cache.check("sck_abc_nope") is None
    assert len(comparisons) == 2
    cache.drop("sck_abc_pw")
    assert cache.check("sck_abc_pw") is None
    for i in range(3):  # bounded: full means start over
        cache.put(str(i), b"h", "n", "service")
    assert len(cache.rows) <= 2


@pytest.mark.parametrize("token", ["", "sck", "sck_a", "sck_a_", "sck__b", "xyz_a_b", "a_b_c_d"])
def test_malformed_tokens_are_refused_without_a_lookup(token) -> None:
    assert auth._split(token) is None
