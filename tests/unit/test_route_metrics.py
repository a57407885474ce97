"""The lean route metrics middleware counts exactly what Litestar's own middleware counts."""

from __future__ import annotations

from litestar import Litestar, get, post
from litestar.exceptions import NotFoundException
from litestar.params import FromPath
from litestar.plugins.prometheus import PrometheusConfig, PrometheusMiddleware
from litestar.testing import TestClient
from prometheus_client import REGISTRY

from skill_credits.observability import RouteMetricsMiddleware


@get("/items/{item_id:int}")
async def read_item(item_id: FromPath[int]) -> dict:
    if item_id == 0:
        raise NotFoundException("no such item")
    return {"id": item_id}


@post("/items")
async def create_item() -> dict:
    return {"id": 1}


@get("/hidden")
async def hidden() -> dict:
    return {}


@get("/boom")
async def boom() -> None:
    raise RuntimeError("a bug")


def _app(prefix: str, middleware_class: type[PrometheusMiddleware]) -> Litestar:
    config = PrometheusConfig(
        app_name="probe",
        prefix=prefix,
        group_path=True,
        exclude=["^/hidden"],
        middleware_class=middleware_class,
    )
    return Litestar(
        [read_item, create_item, hidden, boom], middleware=[config.middleware], debug=False
    )


def _samples(prefix: str) -> dict[tuple, float]:
    """Every sample of the metrics named ``prefix_*`` but the timings' sums and buckets."""
    found = {}
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name.startswith(prefix + "_") and not s.name.endswith(("_sum", "_bucket")):
                if s.name.endswith("_created"):
                    continue
                name = s.name.removeprefix(prefix)
                found[(name, tuple(sorted(s.labels.items())))] = s.value
    return found


def _drive(app: Litestar) -> None:
    with TestClient(app, raise_server_exceptions=False) as client:
        for n in (1, 2, 3):
            assert client.get(f"/items/{n}").status_code == 200
        assert client.get("/items/0").status_code == 404
        assert client.post("/items").status_code == 201
        assert client.get("/hidden").status_code == 200  # excluded: counted by neither
        assert client.get("/boom").status_code == 500
        assert client.get("/boom").status_code == 500


def test_lean_middleware_counts_what_litestars_counts() -> None:
    _drive(_app("probe_stock", PrometheusMiddleware))
    _drive(_app("probe_lean", RouteMetricsMiddleware))
    stock, lean = _samples("probe_stock"), _samples("probe_lean")
    # the same, but that a request in progress has no status (Litestar's labels it 200)
    no_status = {
        (name, tuple(kv for kv in labels if kv[0] != "status_code")): value
        for (name, labels), value in stock.items()
        if name == "_requests_in_progress"
    }
    assert {k: v for k, v in stock.items() if k[0] != "_requests_in_progress"} | no_status == lean
    # and what both count is right: by route template and status, none left in progress
    assert (
        lean[
            (
                "_requests_total",
                (
                    ("app_name", "probe"),
                    ("method", "GET"),
                    ("path", "/items/{item_id}"),
                    ("status_code", "200"),
                ),
            )
        ]
        == 3
    )
    errors = {k: v for k, v in lean.items() if k[0] == "_requests_error_total"}
    assert list(errors.values()) == [2]
    assert dict(errors) and all(("status_code", "500") in k[1] for k in errors)
    in_progress = [v for k, v in lean.items() if k[0] == "_requests_in_progress"]
    assert in_progress and all(v == 0 for v in in_progress)
    durations = [v for k, v in lean.items() if k[0] == "_request_duration_seconds_count"]
    assert sum(durations) == 7
    assert not [k for k in lean if ("path", "/hidden") in k[1]]


def test_lean_middleware_refuses_a_config_it_would_not_count_alike() -> None:
    import pytest

    for config in (
        PrometheusConfig(prefix="probe_raw", middleware_class=RouteMetricsMiddleware),
        PrometheusConfig(
            prefix="probe_labels",
            group_path=True,
            labels={"team": "x"},
            middleware_class=RouteMetricsMiddleware,
        ),
    ):
        with pytest.raises(ValueError):
            Litestar([read_item], middleware=[config.middleware])


def test_lean_middleware_times_the_request() -> None:
    _drive(_app("probe_timed", RouteMetricsMiddleware))
    total = 0.0
    for metric in REGISTRY.collect():
        for s in metric.samples:
            if s.name == "probe_timed_request_duration_seconds_sum":
                total += s.value
    assert total > 0
