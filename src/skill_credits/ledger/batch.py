"""Natural batching of charges, holds and captures inside one worker (a ``Batcher`` of
each kind, in ``Batches``: ``ChargeBatcher`` sends with ``repository.charge_batch``,
``HoldBatcher`` with ``hold_batch``, ``CaptureBatcher`` with ``capture_batch``).

A write that finds a free slot (at most ``slots`` calls in flight) is sent at once, with
whatever else is waiting: alone when the worker is idle, so batching adds no wait. The
writes that arrive while every slot is busy wait for a call to come back and go
together in the next one: one round trip and one commit for all of them
(``repository.charge_batch``, ``sc_charge_batch`` in ``ledger/sql/batches.sql``; holds and
captures likewise).

A call answers after PostgreSQL committed it, so a write is acknowledged only once its row
is there. Each item gets its own outcome row. When a batch fails with an error that rolled
it back (a key another batch committed meanwhile, a constraint), every one of its items is
answered ``None``: the caller runs it alone, so one item never fails the others. When the
database could not be reached, every item gets that error (a 503), as a single write would.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from skill_credits.db import Connection, Database
from skill_credits.db.failures import is_unavailable
from skill_credits.db.shards import ShardMap
from skill_credits.ledger import repository as repo
from skill_credits.observability import BATCH_SIZES

Waiting = tuple[dict[str, Any], "asyncio.Future[Any]"]


class Batcher:
    """The batches of one kind of write. Each kind is a subclass below: its ``send`` names
    the repository function that writes a batch of it, and ``kind`` labels its sizes."""

    kind = ""

    __slots__ = (
        "_db",
        "_sizes_metric",
        "max_items",
        "slots",
        "wait",
        "_pending",
        "_running",
        "_tasks",
        "sizes",
    )

    def __init__(self, db: Database, *, max_items: int, slots: int, wait: float) -> None:
        self._db = db
        self._sizes_metric = BATCH_SIZES.labels(self.kind)
        self.max_items = max_items
        self.slots = slots
        # the longest a write waits for a slot before it answers 503, as it would
        # waiting for a pooled connection (every slot stuck, say, behind a row lock)
        self.wait = wait
        self._pending: list[Waiting] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        # how many calls sent how many writes (batch size -> calls); /metrics has them too
        self.sizes: dict[int, int] = {}

    async def send(self, conn: Connection, items: list[dict[str, Any]]) -> list[Any]:
        """The outcome rows of ``items``, written in one call and one commit, in order."""
        raise NotImplementedError

    async def write(self, params: dict[str, Any]) -> Any:
        """One attempt of the write ``params``: its outcome row, or None when it must be
        run alone (its batch failed)."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        waiting = (params, answer)
        self._pending.append(waiting)
        if self._running < self.slots:
            # a free slot: a call goes out now, with this write and whatever waits. It
            # runs in a task of its own, so a caller that gives up never strands the rest.
            self._running += 1
            task = asyncio.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        expiry = loop.call_later(self.wait, self._expire, waiting)
        try:
            return await answer
        finally:
            expiry.cancel()

    def _expire(self, waiting: Waiting) -> None:
        """A write still waiting for a slot after ``wait``: it leaves the queue unsent
        and answers as a pool timeout does (503)."""
        for i, other in enumerate(self._pending):
            if other is waiting:
                del self._pending[i]
                waiting[1].set_exception(TimeoutError("no slot free in time"))
                return

    async def _drain(self) -> None:
        """Send what waits, then what arrived meanwhile, until nothing waits."""
        try:
            while self._pending:
                await self._send(self._take(self._db.known_shard_map()))
        finally:
            self._running -= 1

    def _take(self, shards: ShardMap | None) -> list[Waiting]:
        """The next batch, out of the queue: the oldest ``max_items`` writes; on a Citus
        cluster (``shards``), of the users on the node of the oldest write's user, so the
        call runs on that one node (``p_route``) without a two-phase commit. A user's
        writes stay in arrival order: they all go to one node."""
        if shards is None:
            batch = self._pending[: self.max_items]
            del self._pending[: self.max_items]
            return batch
        node = shards.node_of(self._pending[0][0]["user_id"])
        batch: list[Waiting] = []
        rest: list[Waiting] = []
        for waiting in self._pending:
            if len(batch) < self.max_items and shards.node_of(waiting[0]["user_id"]) == node:
                batch.append(waiting)
            else:
                rest.append(waiting)
        self._pending[:] = rest
        return batch

    async def _send(self, batch: list[Waiting]) -> None:
        self.sizes[len(batch)] = self.sizes.get(len(batch), 0) + 1
        self._sizes_metric.observe(len(batch))
        # by user, each user's charges in arrival order: every batch locks users in one
        # order, so two batches never deadlock
        ordered = sorted(batch, key=lambda waiting: waiting[0]["user_id"])
        try:
            async with self._db.statements() as conn:
                rows = await self.send(conn, [params for params, _ in ordered])
        except Exception as exc:  # noqa: BLE001 - every waiting charge gets an answer
            for _, answer in ordered:
                if answer.done():
                    continue
                if is_unavailable(exc) or not isinstance(exc, _ROLLED_BACK):
                    answer.set_exception(exc)
                else:
                    answer.set_result(None)
            return
        for (_, answer), row in zip(ordered, rows, strict=True):
            if not answer.done():
                answer.set_result(row)


class ChargeBatcher(Batcher):
    __slots__ = ()
    kind = "charge"

    async def send(self, conn: Connection, items: list[dict[str, Any]]) -> list[Any]:
        return await repo.charge_batch(conn, items)


class HoldBatcher(Batcher):
    __slots__ = ()
    kind = "hold"

    async def send(self, conn: Connection, items: list[dict[str, Any]]) -> list[Any]:
        return await repo.hold_batch(conn, items)


class CaptureBatcher(Batcher):
    __slots__ = ()
    kind = "capture"

    async def send(self, conn: Connection, items: list[dict[str, Any]]) -> list[Any]:
        return await repo.capture_batch(conn, items)


@dataclass(frozen=True, slots=True)
class Batches:
    """A worker's batchers, one per write that runs in batches."""

    charges: ChargeBatcher
    holds: HoldBatcher
    captures: CaptureBatcher

    @classmethod
    def of(cls, db: Database, *, max_items: int, slots: int, wait: float) -> Batches:
        return cls(
            ChargeBatcher(db, max_items=max_items, slots=slots, wait=wait),
            HoldBatcher(db, max_items=max_items, slots=slots, wait=wait),
            CaptureBatcher(db, max_items=max_items, slots=slots, wait=wait),
        )


def _rolled_back() -> tuple[type[BaseException], ...]:
    """The errors PostgreSQL raised while it ran the call: the transaction rolled back and
    nothing of the batch was written."""
    import asyncpg
    from sqlalchemy import exc as sa_exc

    return (sa_exc.IntegrityError, sa_exc.DataError, asyncpg.PostgresError)


_ROLLED_BACK = _rolled_back()
