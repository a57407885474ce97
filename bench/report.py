"""The benchmark's report: BENCHMARKS.md from the results (bench/report.md.j2 holds its text),
the throughput plot, and a description of the machine the results were measured on."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jinja2

from bench.phases import CONCURRENCY

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# the ratio table's columns: (numerator, denominator) of the medians at c=32
RATIO_COLUMNS = (
    ("skill-credits 1w", "ceiling 1w"),
    ("skill-credits 2w", "ceiling 2w"),
    ("skill-credits 1w", "original 1w"),
    ("skill-credits 2w", "original 2w"),
    ("ceiling + Redis GET 1w", "ceiling 1w"),
    ("skill-credits 1w", "ceiling + Redis GET 1w"),
    ("skill-credits 1w", "naive handler 1w"),
    ("skill-credits 2w", "naive handler 2w"),
)


def write(data: dict) -> None:
    """BENCHMARKS.md and docs/bench-throughput.png, with bench/analysis.md as the last part."""
    analysis = HERE / "analysis.md"
    data["analysis"] = analysis.read_text() if analysis.exists() else ""
    plot(data["throughput"], ROOT / "docs" / "bench-throughput.png")
    (ROOT / "BENCHMARKS.md").write_text(render(data))


def render(data: dict) -> str:
    env = jinja2.Environment(  # noqa: S701 - Markdown, not HTML: nothing to escape
        loader=jinja2.FileSystemLoader(HERE),
        trim_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters |= {
        "f0": lambda x: f"{x:.0f}",
        "g": lambda x: f"{x:g}",
        "ms": lambda us: f"{us / 1000:.2f}",
        "percent": lambda share: f"{share:.1%}",
        "users": lambda pattern: "10 000" if pattern == "spread" else "one hot",
        "redis_version": lambda v: v.split("v=")[-1].split()[0] if "v=" in v else v,
    }
    breakdown = data.get("breakdown") or {}
    steps = breakdown.get("steps", []) if isinstance(breakdown, dict) else breakdown
    return env.get_template("report.md.j2").render(
        data=data,
        rounds=len(next(iter(data["ratios"].values()))["spread"]["runs"]),
        ratio_columns=RATIO_COLUMNS,
        median=lambda target, pattern: data["ratios"][target][pattern]["median"],
        steps=[(row["step"], _step_cells(row, steps, i)) for i, row in enumerate(steps)],
        pieces=breakdown.get("pieces", []) if isinstance(breakdown, dict) else [],
        analysis=data.get("analysis", ""),
    )


def _step_cells(row: dict, steps: list[dict], index: int) -> list[str]:
    """CPU µs per charge, 1 and 32 at a time, each with what it adds to the step it builds
    on (``adds_to``, else the step before)."""
    base = row.get("adds_to", index - 1 if index else None)
    before = steps[base] if base is not None else None
    cells = []
    for field in ("cpu_us", "cpu_us_32"):
        value = row.get(field)
        earlier = before.get(field) if before else None
        cells.append("-" if value is None else f"{value:.0f}")
        cells.append("" if value is None or earlier is None else f"{value - earlier:+.0f}")
    return cells


def machine() -> dict:
    def version(cmd: list[str]) -> str:
        try:
            return (
                subprocess.run(cmd, capture_output=True, text=True).stdout.strip().splitlines()[0]
            )
        except (OSError, IndexError):
            return "?"

    mem = next(
        x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")
    )
    cpu = next(
        (
            x.split(":", 1)[1].strip()
            for x in Path("/proc/cpuinfo").read_text().splitlines()
            if x.startswith("model name")
        ),
        "?",
    )
    return {
        "cores": os.cpu_count(),
        "cpu": cpu,
        "memory": f"{int(mem.split()[1]) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "postgres": version(["psql", "--version"]),
        "redis": version(["redis-server", "--version"]),
        "wrk": version(["wrk", "--version"]) or "wrk",
        "packages": {
            p: importlib.metadata.version(p)
            for p in ("litestar", "sqlalchemy", "asyncpg", "redis", "msgspec", "uvicorn")
        },
    }


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=False)
    for ax, pattern in zip(axes, ("spread", "hot"), strict=True):
        for target in sorted({r["target"] for r in rows}):
            pts = [
                (r["concurrency"], r["rate"])
                for r in rows
                if r["target"] == target and r["pattern"] == pattern
            ]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=target)
        ax.set_xscale("log", base=2)
        ax.set_xticks(CONCURRENCY, [str(c) for c in CONCURRENCY])
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("charges / s")
        ax.set_title("10 000 users" if pattern == "spread" else "one hot user")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("POST /v1/charges throughput (2 cores, PostgreSQL and Redis on the same machine)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
