"""What belongs to a test run as a whole: unique names, blocking code run from async
fixtures, and the figures docs/reliability.md quotes."""

from __future__ import annotations

import concurrent.futures
import os
import uuid


def unique(prefix: str = "U") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12].upper()}"


def run_in_thread(fn, *args):
    """Run blocking code (which may call asyncio.run) on a fresh thread.

    Keeps fixtures working whatever event loop the calling thread has running
    (pytest-asyncio's, or the one Playwright's sync API starts).
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(fn, *args).result()


def record(name: str, figures: dict) -> None:
    """With TEST_STATS_FILE set, append what a test did (docs/reliability.md's figures)."""
    path = os.environ.get("TEST_STATS_FILE")
    if path:
        with open(path, "a") as f:
            f.write(f"{name}\t{figures}\n")
