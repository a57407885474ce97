"""Where a user's rows live on a Citus cluster: the shard map, cached.

Citus places a row by the hash of its ``user_id`` (PostgreSQL's ``hashtext``, which
``user_hash`` computes here without a round trip): each shard of ``users`` holds a range
of hashes and lives on one node, and every other table of a user's data keeps the same
ranges on the same nodes (colocation). The map is read from the coordinator's metadata
(``pg_dist_shard``, ``pg_dist_placement``, ``pg_dist_node``) and cached; after a rebalance
it is stale until it is read again, which costs speed (a batch then spans two nodes and
commits in two phases; a lookup by id misses and asks every node), never correctness.

On one PostgreSQL server there is no map (``ShardMap.load`` answers None).
"""

from __future__ import annotations

import bisect
import functools
from dataclasses import dataclass

from sqlalchemy import text

from skill_credits.db.adapter import Connection

_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _MASK
    a ^= _rot(c, 4)
    c = (c + b) & _MASK
    b = (b - a) & _MASK
    b ^= _rot(a, 6)
    a = (a + c) & _MASK
    c = (c - b) & _MASK
    c ^= _rot(b, 8)
    b = (b + a) & _MASK
    a = (a - c) & _MASK
    a ^= _rot(c, 16)
    c = (c + b) & _MASK
    b = (b - a) & _MASK
    b ^= _rot(a, 19)
    a = (a + c) & _MASK
    c = (c - b) & _MASK
    c ^= _rot(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return c


@functools.lru_cache(maxsize=65536)
def user_hash(user_id: str) -> int:
    """PostgreSQL's ``hashtext(user_id)`` (``hash_bytes`` of src/common/hashfn.c, Bob
    Jenkins' lookup3, on the UTF-8 bytes): the value Citus places the user's rows by, as
    a signed 32-bit integer. tests/integration/test_citus.py compares it with the server's."""
    key = user_id.encode()
    length = len(key)
    a = b = c = (0x9E3779B9 + length + 3923095) & _MASK
    k = 0
    while length - k >= 12:
        a = (a + int.from_bytes(key[k : k + 4], "little")) & _MASK
        b = (b + int.from_bytes(key[k + 4 : k + 8], "little")) & _MASK
        c = (c + int.from_bytes(key[k + 8 : k + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        k += 12
    rest = key[k:]
    # the last 11 bytes: a and b whole, c from its second byte (its lowest is the length's)
    a = (a + int.from_bytes(rest[0:4], "little")) & _MASK
    b = (b + int.from_bytes(rest[4:8], "little")) & _MASK
    c = (c + (int.from_bytes(rest[8:11], "little") << 8)) & _MASK
    c = _final(a, b, c)
    return c - (1 << 32) if c & 0x80000000 else c


@dataclass(frozen=True, slots=True)
class Shard:
    low: int  # the hashes this shard holds, both ends included
    high: int
    node: str  # "host:port" of the node that holds it
    route: str  # a user id whose hash falls in this shard: a delegated call lands here


MAP = text(
    "SELECT s.shardminvalue::int AS low, s.shardmaxvalue::int AS high,"
    "       n.nodename || ':' || n.nodeport AS node"
    " FROM pg_dist_shard s"
    " JOIN pg_dist_placement p ON p.shardid = s.shardid"
    " JOIN pg_dist_node n ON n.groupid = p.groupid AND n.noderole = 'primary'"
    " WHERE s.logicalrelid = 'users'::regclass"
    " ORDER BY s.shardminvalue::int"
)
HAS_CITUS = text(
    "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus')"
    " AND to_regclass('pg_dist_shard') IS NOT NULL AS citus"
)


def _route(low: int, high: int) -> str:
    """The first of ``r0``, ``r1``, … whose hash falls in [low, high]."""
    n = 0
    while not low <= user_hash(f"r{n}") <= high:
        n += 1
    return f"r{n}"


@dataclass(frozen=True, slots=True)
class ShardMap:
    shards: tuple[Shard, ...]

    @classmethod
    async def load(cls, conn: Connection) -> ShardMap | None:
        """The cluster's map, or None where the database is not distributed."""
        if not (await conn.execute(HAS_CITUS)).scalar():
            return None
        rows = (await conn.execute(MAP)).all()
        if not rows:
            return None
        return cls(tuple(Shard(r.low, r.high, r.node, _route(r.low, r.high)) for r in rows))

    def shard_of(self, hashed: int) -> Shard:
        lows = [s.low for s in self.shards]
        return self.shards[max(bisect.bisect_right(lows, hashed) - 1, 0)]

    def node_of(self, user_id: str) -> str:
        return self.shard_of(user_hash(user_id)).node

    def route_of(self, hashed: int) -> str:
        """A user id on the same shard as the hash ``hashed`` (an id's routing)."""
        return self.shard_of(hashed).route
