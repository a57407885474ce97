"""A charge reads the skill cache before it takes a database connection.

A connection held across the Redis round trip would be one no other charge can use:
with a slow Redis the hot-path pool would drain on cache reads alone. Fakes only; the
real statement and cache are exercised by the integration tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import types

from skill_credits.ledger import repository as repo
from skill_credits.ledger import service
from skill_credits.ledger.schemas import ChargeIn, HoldIn
from skill_credits.skills.schemas import Skill

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Connections:
    """A connection pool whose ledger function writes only at PostgreSQL's skill version
    (else it answers the outcome ``version`` with the current skill)."""

    def __init__(self, version: int = 3) -> None:
        self.open = 0
        self.taken = 0
        self.version = version

    @contextlib.asynccontextmanager
    async def statements(self):
        self.open += 1
        self.taken += 1
        try:
            yield self
        finally:
            self.open -= 1

    connect = statements  # a Database: the hot-path pool and the SQLAlchemy one alike

    async def execute(self, statement, params):
        assert statement in (repo.CHARGE, repo.HOLD)
        behind = params["version"] not in (None, self.version)
        row = types.SimpleNamespace(
            outcome="version" if behind else "written",
            id="00000000-0000-0000-0000-000000000001",
            user_id=params["user_id"],
            type="CONSUMPTION",
            amount=-1,
            balance_after=9,
            skill=params["skill"],
            units=1,
            unit_cost=1,
            description=None,
            refund_of=None,
            member=params["member"],
            grant_id=None,
            sources="[]",
            created_at=NOW,
            s_id="00000000-0000-0000-0000-000000000002",
            s_name=params["skill"],
            s_display_name="S",
            s_description="",
            s_cost=1,
            s_version=self.version,
            s_is_active=True,
            s_created_at=NOW,
            s_updated_at=NOW,
            skill_version=self.version,
            status="held",
            expires_at=NOW,
        )
        return types.SimpleNamespace(one=lambda: row)


class Cache:
    def __init__(self, connections: Connections) -> None:
        self.connections = connections
        self.open_while_reading: list[int] = []
        self.put_versions: list[int] = []

    async def get(self, name):
        self.open_while_reading.append(self.connections.open)
        return Skill(
            id="00000000-0000-0000-0000-000000000002",
            name=name,
            display_name="S",
            description="",
            cost=1,
            is_active=True,
            version=3,
            created_at=NOW,
            updated_at=NOW,
        )

    async def put(self, skill):
        self.open_while_reading.append(self.connections.open)
        self.put_versions.append(skill.version)
        return True


async def test_a_charge_reads_the_cache_before_it_takes_a_connection() -> None:
    connections = Connections()
    cache = Cache(connections)
    written = await service.charge(
        connections,
        cache,
        ChargeIn(user_id="u1", skill="S"),
        None,
        b"h",
        api_key_id="k",
    )
    assert written.transaction.balance_after == 9
    assert connections.taken == 1
    assert cache.open_while_reading == [0]


async def test_a_hold_reads_the_cache_before_it_takes_a_connection() -> None:
    connections = Connections()
    cache = Cache(connections)
    written = await service.create_hold(
        connections, cache, HoldIn(user_id="u1", skill="S"), None, b"h"
    )
    assert written.hold.skill_version == 3
    assert connections.taken == 1
    assert cache.open_while_reading == [0]


async def test_a_cache_found_behind_is_refreshed_after_the_connection_is_back() -> None:
    """The cache says version 3, PostgreSQL has 4: the function refuses, the charge runs
    again at 4 on the same connection, and the cache is told of 4 only once it is returned."""
    connections = Connections(version=4)
    cache = Cache(connections)
    written = await service.charge(
        connections, cache, ChargeIn(user_id="u1", skill="S"), None, None, api_key_id="k"
    )
    assert written.transaction.balance_after == 9
    assert connections.taken == 1
    assert cache.put_versions == [4]
    assert cache.open_while_reading == [0, 0]
