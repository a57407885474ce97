"""A request body is parsed once: the strict decode's Struct is the handler's ``data``."""

from __future__ import annotations

from litestar import Litestar, post
from litestar.params import JSONBody
from litestar.testing import TestClient
from msgspec import Struct

from skill_credits.bodies import strict_body

MADE: list[int] = []


class Counted(Struct, forbid_unknown_fields=True):
    units: int

    def __post_init__(self) -> None:
        MADE.append(self.units)  # once per decode of a body into this Struct


@post("/count", before_request=strict_body)
async def count(data: JSONBody[Counted]) -> dict[str, int]:
    return {"units": data.units}


def test_a_body_is_decoded_once() -> None:
    MADE.clear()
    with TestClient(Litestar(route_handlers=[count], openapi_config=None)) as client:
        answer = client.post("/count", json={"units": 2})
        refused = client.post("/count", json={"units": "2"})  # still strict
    assert (answer.status_code, answer.json()) == (201, {"units": 2})
    assert refused.status_code == 400
    assert MADE == [2]
