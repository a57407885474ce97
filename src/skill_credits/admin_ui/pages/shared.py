"""What every admin page shares: the form body, the dependencies, the guard of plain
inputs, post/redirect/get and the flash messages."""

from __future__ import annotations

import uuid
from typing import Annotated

from litestar import Request
from litestar.di import NamedDependency
from litestar.enums import RequestEncodingType
from litestar.params import Body
from litestar.response import Redirect

from skill_credits.db import Database
from skill_credits.errors import validation_error
from skill_credits.skills.cache import SkillCache
from skill_credits.validation import check_urlencoded, plain_text

Form = Annotated[dict[str, str], Body(media_type=RequestEncodingType.URL_ENCODED)]
Db = NamedDependency[Database]
Cache = NamedDependency[SkillCache]


async def plain_inputs(request: Request) -> None:
    """``before_request`` of every admin page: one guard for what the forms pass on.

    A NUL or bytes that are not UTF-8 in the path, the query or a form field are a 400
    naming it, before any handler hands them to PostgreSQL (which refuses NUL in text).
    """
    for name, value in request.path_params.items():
        if isinstance(value, str) and "\x00" in value:
            raise validation_error(name, "must not contain NUL")
    plain_text("path", (request.scope.get("raw_path") or b"").split(b"?", 1)[0])
    check_urlencoded(request.scope.get("query_string") or b"")
    if request.method == "POST":  # every admin form is url-encoded
        check_urlencoded(await request.body())


def see_other(url: str) -> Redirect:
    """Post/redirect/get: the browser follows with a GET."""
    return Redirect(url, status_code=303)


def flash(request: Request, kind: str, message: str) -> None:
    request.session.setdefault("flash", []).append({"kind": kind, "message": message})


def pop_flash(request: Request) -> list[dict[str, str]]:
    return request.session.pop("flash", []) if request.session else []


def uuid_or_none(value: str) -> str | None:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None
