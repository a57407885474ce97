"""What the tests and the benchmarks share, one job a module; nothing here is a fixture
(tests/conftest.py builds the fixtures from these).

- servers.py: the PostgreSQL and Redis a test run uses (local, or containers).
- processes.py: servers of a test's own: `skill-credits serve`, redis-server, a cluster.
- databases.py: PostgreSQL from outside the app: connections, throwaway databases, keys,
  the ledger's checks.
- api.py: the run's API keys and a thin client of the HTTP API.
- browser.py: the browser tests' steps (log in, charge beside the page).
- run.py: unique names, blocking code on a thread of its own, figures of the run.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
