"""The price a charge and a hold run at.

A charge and a hold are priced: they run at the skill version the cache knows. The
cache is read before a connection is taken and told of a newer version only after the
connection is given back, so no connection waits on Redis. When the function finds the
cache behind (outcome ``version``), it answers with the current skill and the write runs
again at it (``Price.answered``), at most ``MAX_ATTEMPTS`` times alone (``attempts``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from skill_credits import errors
from skill_credits.skills.cache import SkillCache
from skill_credits.skills.repository import skill_from_row
from skill_credits.skills.schemas import Skill

MAX_ATTEMPTS = 5


class Price:
    """The skill version a priced write runs at: the cache's, then PostgreSQL's each time
    the function finds the cache behind. ``publish`` tells the cache of the newer one (call
    it once the connection is back)."""

    __slots__ = ("skill", "newer")

    def __init__(self, cached: Skill | None) -> None:
        self.skill = cached
        self.newer: Skill | None = None

    @property
    def version(self) -> int | None:
        return self.skill.version if self.skill is not None else None

    def at(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params``, set to run at this price's version."""
        params["version"] = self.version
        return params

    def answered(self, row: Any) -> bool:
        """Whether ``row`` answers the write. Not when there is none (the write has not run
        alone yet, its batch failed, or it lost the race to a request with its key), nor
        when the function found the price behind (outcome ``version``): the price moves to
        the skill the row carries, and the write runs again at it."""
        if row is None:
            return False
        if row.outcome != "version":
            return True
        self.skill = self.newer = skill_from_row(row, "s_")
        return False

    async def publish(self, cache: SkillCache) -> None:
        if self.newer is not None:
            await cache.put(self.newer)


def attempts() -> Iterator[int]:
    """The runs of a priced write alone: ``MAX_ATTEMPTS`` at most. A loop that runs out of
    them (it never ``break``s on an answer) ends in ``contention``."""
    yield from range(MAX_ATTEMPTS)
    raise errors.contention()
