"""What the browser tests do on a page or beside it: log in, charge through the JSON API."""

from __future__ import annotations

import httpx


def login(page, token: str) -> None:
    response = page.goto("/admin/login")
    assert response is not None and response.ok, response and (response.status, response.text())
    page.fill("#api_key", token)
    page.click("button[type=submit]")


def charge(http, keys, user: str, skill: str) -> httpx.Response:
    return http.post(
        "/v1/charges", json={"user_id": user, "skill": skill}, headers=keys.auth("service")
    )
