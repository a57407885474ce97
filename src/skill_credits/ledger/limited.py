"""The worker's hint of which users have spend limits (``LimitedUsers``): it picks the
statement a charge tries first."""

from __future__ import annotations


class LimitedUsers:
    """The users this worker last saw charged with spend limits: their charges go the way
    that checks limits first (``p_limited`` of ``sc_charge``). Only a hint: the database
    checks ``users.limited`` itself, a wrong hint costs one statement that writes nothing,
    and each written charge says whether its user has limits. At most ``capacity`` users;
    past that the hint starts over (users with limits are then learnt again, one charge
    each)."""

    __slots__ = ("capacity", "_users")

    def __init__(self, capacity: int = 65_536) -> None:
        self.capacity = capacity
        self._users: set[str] = set()

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._users

    def learn(self, user_id: str, limited: bool) -> None:
        if not limited:
            self._users.discard(user_id)
        elif user_id not in self._users:
            if len(self._users) >= self.capacity:
                self._users.clear()
            self._users.add(user_id)
