"""PostgreSQL: the ``Database`` (pools.py) and the ``Connection`` every repository
function takes (adapter.py); failures.py tells a lost database from a refused statement.

The readiness ping is in health.py, the keyset page in pagination.py.
"""

from skill_credits.db.adapter import Connection
from skill_credits.db.pools import Database

__all__ = ["Connection", "Database"]
