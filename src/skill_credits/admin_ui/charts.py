"""Charts of the admin pages, drawn on the server as SVG by pygal (no JavaScript: they
show with it off), each with the same figures as a table beside it.

pygal puts a stylesheet inside each SVG; the admin pages' Content-Security-Policy allows
no inline style, so that stylesheet is served once as ``/admin/charts.css``
(``stylesheet()``, the same rules for every chart) and taken out of each drawing.

A chart is a ``Chart``: its title, the bucket labels and one series of figures per group.
``svg`` draws it; the template puts the figures in a table (``rows``), which is what an
assistive technology reads (the drawing itself is hidden from it).
"""

from __future__ import annotations

import functools
import html
import re
from dataclasses import dataclass, field
from datetime import datetime

import pygal
from markupsafe import Markup
from pygal.style import Style

from skill_credits.usage.schemas import Usage

STYLE = Style(
    background="transparent",
    plot_background="transparent",
    foreground="#1b1f24",
    foreground_strong="#1b1f24",
    foreground_subtle="#5b6470",
    colors=("#2456d6", "#b42318", "#067647", "#b54708", "#6941c6", "#0e7090", "#5b6470"),
    font_family="system-ui, sans-serif",
    label_font_size=12,
    major_label_font_size=12,
    legend_font_size=12,
    title_font_size=14,
)
# what pygal writes beside the drawing: comments, a script of its config (never run here),
# and its stylesheet (served apart: stylesheet())
_NOT_DRAWING = re.compile(r"<!--.*?-->|<script\b.*?</script>|<style\b.*?</style>", re.DOTALL)
_STYLE = re.compile(r"<style[^>]*>(.*?)</style>", re.DOTALL)


def _options() -> dict:
    return {"style": STYLE, "js": [], "disable_xml_declaration": True}


@functools.cache
def stylesheet() -> str:
    """pygal's rules for a chart in STYLE, for every chart of the page (its own selector,
    ``#chart-<uuid>``, made the class every pygal SVG has)."""
    chart = pygal.StackedBar(**_options())
    chart.add("", [1])
    rendered = chart.render(is_unicode=True)
    css = "\n".join(_STYLE.findall(rendered))
    own = re.search(r'id="(chart-[0-9a-f-]+)"', rendered)
    assert own is not None
    return html.unescape(css.replace(f"#{own.group(1)}", ".pygal-chart"))


MAX_SERIES = 6  # the largest groups; the rest are summed as "other"


@dataclass
class Chart:
    title: str
    labels: list[str]
    series: dict[str, list[int]] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, list[int]]]:
        """The figures, a row per bucket: what the table under the chart shows."""
        return [
            (label, [values[n] for values in self.series.values()])
            for n, label in enumerate(self.labels)
        ]

    def svg(self) -> Markup:
        chart = pygal.StackedBar(
            **_options(),
            width=900,
            height=300,
            show_legend=True,
            legend_at_bottom=True,
            x_label_rotation=0 if len(self.labels) <= 12 else 45,
            show_minor_x_labels=False,
            truncate_legend=24,
            margin=8,
            no_data_text="No usage",
        )
        chart.x_labels = self.labels
        chart.x_labels_major = self.labels[:: max(1, len(self.labels) // 12)]
        for name, values in self.series.items():
            chart.add(name, values)
        drawn = _NOT_DRAWING.sub("", chart.render(is_unicode=True))
        # pygal builds the SVG as an element tree: every label in it is escaped XML
        hidden = drawn.replace("<svg ", '<svg aria-hidden="true" focusable="false" ', 1)
        return Markup(hidden)  # noqa: S704


def label(start: datetime, interval: str) -> str:
    if interval == "hour":
        return f"{start:%m-%d %H:00}"
    if interval == "day":
        return f"{start:%Y-%m-%d}"
    return f"{start:%Y-%m}"


def over_time(title: str, answer: Usage, value: str = "consumed") -> Chart:
    """``value`` (consumed or refunded) of ``answer``'s items, a series per group (the
    largest MAX_SERIES, the rest as "other"), a bar per bucket with any activity."""
    starts = sorted({item.start for item in answer.items})
    index = {start: n for n, start in enumerate(starts)}
    ranked = sorted(answer.totals, key=lambda t: -getattr(t, value))
    kept = [t.group for t in ranked[:MAX_SERIES] if getattr(t, value)]
    chart = Chart(title, [label(s, answer.interval) for s in starts])
    names = {group: group if group is not None else "(none)" for group in kept}
    for group in kept:
        chart.series[names[group]] = [0] * len(starts)
    for item in answer.items:
        amount = getattr(item, value)
        if not amount:
            continue
        name = names.get(item.group, "other")
        chart.series.setdefault(name, [0] * len(starts))[index[item.start]] += amount
    return chart
