"""Where things live, checked on the source: the environment is read in settings.py only,
SQL is written in repositories only (and the few queries of no table), no private name
crosses modules, no module imports itself through others, and every problem code comes
from the errors catalogue."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from skill_credits import errors
from skill_credits.events.worker import WorkerConfig
from skill_credits.openapi import documented
from skill_credits.settings import ENV, Settings

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "skill_credits"
SQL = re.compile(r"\b(SELECT \S+|INSERT INTO|UPDATE \w+ SET|DELETE FROM)\b")


def modules() -> list[tuple[str, ast.Module]]:
    return [
        (str(path.relative_to(PACKAGE)), ast.parse(path.read_text(), str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def test_the_environment_is_read_in_settings_only() -> None:
    """cli.py may write a variable for the worker processes it starts; nobody else reads."""
    reads = []
    for name, tree in modules():
        if name == "settings.py":
            continue
        written = {
            id(node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store)
        }
        reads += [
            f"{name}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and node.attr in ("environ", "getenv")
            and id(node) not in written
        ]
    assert reads == []


def test_sql_is_written_in_repositories_only() -> None:
    """Besides the repositories: the queries of no table, health.py's readiness ping and
    pagination.py's keyset page; migrate.py, which creates the database itself (no
    table of the package), before any repository can connect; and db/shards.py, which
    reads Citus's own metadata (the shard map), no table of the package either."""
    allowed = {"health.py", "pagination.py", "migrate.py", "db/shards.py"}
    found = []
    for name, tree in modules():
        if name.endswith("repository.py") or name in allowed or name.startswith("migrations"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if SQL.search(node.value):
                    found.append(f"{name}:{node.lineno}")
    assert found == []


def test_no_private_name_is_imported_across_modules() -> None:
    found = [
        f"{name}:{node.lineno} {alias.name}"
        for name, tree in modules()
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skill_credits")
        for alias in node.names
        if alias.name.startswith("_")
    ]
    assert found == []


def module_name(path: str) -> str:
    """``db/pools.py`` → ``skill_credits.db.pools``; ``db/__init__.py`` → ``skill_credits.db``."""
    parts = ["skill_credits", *Path(path).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: str, tree: ast.Module, known: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, inside functions too; importing
    ``a.b.c`` runs ``a`` and ``a.b`` first, but a module's own packages are running
    already (the package writes no relative imports)."""
    own = module_name(path) + "."
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            dotted = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            dotted = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in dotted:
            parts = name.split(".")
            found |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {name for name in found & known if not own.startswith(name + ".")}


def a_circle(graph: dict[str, set[str]]) -> list[str]:
    """A module that reaches itself through its imports, with the way it does; [] if none."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str]:
        if module in path:
            return [*path[path.index(module) :], module]
        if module not in done:
            for other in sorted(graph[module]):
                if circle := visit(other, [*path, module]):
                    return circle
            done.add(module)
        return []

    return next(filter(None, (visit(module, []) for module in sorted(graph))), [])


def test_no_module_imports_itself_through_others() -> None:
    """An import inside a function counts: the circle is there on its first call."""
    trees = modules()
    known = {module_name(path) for path, _ in trees}
    graph = {module_name(path): imported(path, tree, known) for path, tree in trees}
    assert graph["skill_credits.errors"]  # the graph is read
    assert a_circle(graph) == []
    assert a_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_problems_are_built_from_the_catalogue_only() -> None:
    """``ApiError(...)`` is written in errors.py only; every code a constructor names is
    in ``CODES``."""
    outside = []
    named = set()
    for name, tree in modules():
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "ApiError" and name != "errors.py":
                outside.append(f"{name}:{node.lineno}")
            if called in ("problem", "_about") and isinstance(node.args[0], ast.Constant):
                named.add(node.args[0].value)
    assert outside == []
    assert named and named <= set(errors.CODES)


def test_a_constructor_answers_its_code_with_the_catalogue_status_and_title() -> None:
    exc = errors.user_not_found("alice")
    assert (exc.status_code, exc.code, exc.title) == (404, "user_not_found", "User not found")
    assert exc.detail == "no user alice"
    exc = errors.insufficient_credits(5, 3, 10)
    assert exc.status_code == 402 and exc.extra == {
        "code": "insufficient_credits",
        "credits": 5,
        "available": 3,
        "required": 10,
    }
    with pytest.raises(KeyError):
        errors.problem("no_such_code", "a code the catalogue does not hold")


def test_openapi_takes_a_code_for_its_status() -> None:
    responses = documented("x", "user_not_found", "version_conflict", 409)["responses"]
    assert sorted(responses) == [401, 404, 409, 412, 503]
    assert "`user_not_found`" in responses[404].description


def test_settings_defaults_are_the_fields_and_every_variable_is_read() -> None:
    assert Settings.from_env({}) == Settings()
    sample = {"str": " value ", "int": "7", "float": "2.5"}
    fields = {f: type(getattr(Settings(), f)).__name__ for f in ENV.values()}
    s = Settings.from_env({var: sample[fields[field]] for var, field in ENV.items()})
    for field, kind in fields.items():
        assert getattr(s, field) == {"str": "value", "int": 7, "float": 2.5}[kind], field
    config = WorkerConfig()
    assert (config.max_attempts, config.backoff_base, config.poll_interval) == (
        Settings().webhook_max_attempts,
        Settings().webhook_backoff_seconds,
        Settings().webhook_poll_seconds,
    )
