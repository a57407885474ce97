"""A charge reads the skill cache before it takes a database connection.

A connection held across the Redis round trip would be one no other charge can use:
with a slow Redis the hot-path pool would drain on cache reads alone. Fakes only; the
real statement and cache are exercised by the integration tests.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import types

import pytest
from sqlalchemy import exc as sa_exc

from skill_credits.errors import ApiError
from skill_credits.ledger import repository as repo
from skill_credits.ledger import service
from skill_credits.ledger.batch import Batches
from skill_credits.ledger.pricing import MAX_ATTEMPTS
from skill_credits.ledger.schemas import ChargeIn, HoldIn
from skill_credits.skills.schemas import Skill

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


class Connections:
    """A connection pool whose ledger function writes only at PostgreSQL's skill version
    (else it answers the outcome ``version`` with the current skill). ``moving``: the
    version moves on after every call; ``raced``: so many calls first lose the race to a
    request with their Idempotency-Key."""

    def __init__(self, version: int = 3, *, moving: bool = False, raced: int = 0) -> None:
        self.open = 0
        self.taken = 0
        self.calls = 0
        self.version = version
        self.moving = moving
        self.raced = raced

    def known_shard_map(self) -> None:
        return None  # one server: batches are not split by node

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
        self.calls += 1
        if self.raced:
            self.raced -= 1
            lost = types.SimpleNamespace(
                sqlstate="23505", constraint_name="transactions_idempotency"
            )
            raise sa_exc.IntegrityError("SELECT sc_charge(...)", params, lost)
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
        if self.moving:
            self.version += 1
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


async def test_a_charge_found_behind_in_its_batch_runs_again_alone_at_the_newer_version() -> None:
    connections = Connections(version=4)
    cache = Cache(connections)
    batches = Batches.of(connections, max_items=8, slots=1, wait=5)
    written = await service.charge(
        connections,
        cache,
        ChargeIn(user_id="u1", skill="S"),
        None,
        None,
        api_key_id="k",
        batches=batches,
    )
    assert written.transaction.balance_after == 9
    assert (connections.calls, connections.taken) == (2, 2)  # the batch's, then its own
    assert batches.charges.sizes == {1: 1}
    assert cache.put_versions == [4]


async def test_a_write_still_behind_after_its_attempts_is_contention() -> None:
    """PostgreSQL's version moves on after every call: the charge runs ``MAX_ATTEMPTS``
    times on one connection, then answers 503; the cache is told of the last version."""
    connections = Connections(version=4, moving=True)
    cache = Cache(connections)
    with pytest.raises(ApiError) as refused:
        await service.charge(
            connections, cache, ChargeIn(user_id="u1", skill="S"), None, None, api_key_id="k"
        )
    assert refused.value.status_code == 503
    assert (connections.calls, connections.taken) == (MAX_ATTEMPTS, 1)
    assert cache.put_versions == [4 + MAX_ATTEMPTS - 1]


async def test_a_write_that_lost_its_key_race_runs_again() -> None:
    """A request with the same key committed first: the unique index stopped this one, and
    it runs again (then it would answer the winner's row as the replay)."""
    connections = Connections(raced=1)
    cache = Cache(connections)
    written = await service.create_hold(
        connections, cache, HoldIn(user_id="u1", skill="S"), "k", b"h"
    )
    assert written.hold.skill_version == 3
    assert (connections.calls, connections.taken) == (2, 1)
