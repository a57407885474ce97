"""Browser tests: Debian's Chromium driven by Playwright against `skill-credits serve`."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.support import ROOT
from tests.support.processes import AppServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def pytest_collection_modifyitems(items):
    if CHROMIUM.exists():
        return
    if os.environ.get("REQUIRE_BROWSER"):
        raise pytest.UsageError(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: apt-get install -y chromium")
    for item in items:
        if "tests/browser" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def ui_server(server_env):
    # every test logs in, all from 127.0.0.1: lift the brute-force guard for them
    with AppServer(server_env | {"LOGIN_ATTEMPTS_PER_MINUTE": "10000"}, workers=1) as server:
        yield server


@pytest.fixture(scope="module")
def browser(ui_server, keys, settings):
    # The async session fixtures resolve first: Playwright's sync API then runs a loop here.
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def context(browser, ui_server):
    ctx = browser.new_context(base_url=ui_server.url, viewport={"width": 1280, "height": 860})
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    return context.new_page()


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory) -> Path:
    """docs/ when UPDATE_SCREENSHOTS=1 (to refresh the README's pictures), else a temp dir."""
    if os.environ.get("UPDATE_SCREENSHOTS"):
        return ROOT / "docs"
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture
def http(ui_server, keys):
    """The JSON API of the same server, to set pages up and to check what they did."""
    with httpx.Client(base_url=ui_server.url, timeout=10) as c:
        yield c
