"""Charts drawn on the server as SVG (no chart script, nothing inline the CSP would refuse).

``line_chart`` draws one or more series over time, optionally a dashed projection and horizontal limit
lines (a quota); ``bar_chart`` draws labelled bars. Both return markup for ``{{ chart|safe }}``: every
text in it is escaped here, and the colours come from classes in ``app.css`` (``series``,
``projection``, ``limit``, ``bar``...). Each chart has a ``<title>`` and ``role="img"`` with a label, so
a screen reader gets what it shows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from datetime import datetime
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 220
_LEFT, _RIGHT, _TOP, _BOTTOM = 72, 16, 14, 28


@dataclasses.dataclass(frozen=True)
class Series:
    """Points ``(when, value)`` in time order, drawn with CSS class ``css`` (``series``, ``series-2``,
    ``series-bad``, ``projection``); ``area`` shades under the line."""

    label: str
    points: Sequence[tuple[datetime, float]]
    css: str = "series"
    area: bool = False


@dataclasses.dataclass(frozen=True)
class Limit:
    """A horizontal line at ``value`` (a quota), labelled."""

    label: str
    value: float


def _nice_max(value: float) -> float:
    """The axis top: four equal steps of 1, 2, 2.5 or 5 times a power of ten, at least 1 each and whole
    numbers (so a small or empty series gets ticks 0..4 rather than repeated rounded labels)."""
    wanted = max(value, 0.0) / 4
    magnitude = 1.0
    while True:
        for factor in (1.0, 2.0, 2.5, 5.0) if magnitude >= 10 else (1.0, 2.0, 5.0):
            if factor * magnitude >= wanted:
                return 4 * factor * magnitude
        magnitude *= 10


def _svg(label: str, body: list[str]) -> Markup:
    title = escape(label)
    # Every text in ``body`` was escaped where it was made.
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{title}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{title}</title>{"".join(body)}</svg>'
    )


def _axes(top: float, fmt: Callable[[float], str]) -> list[str]:
    parts = []
    for i in range(5):
        value = top * i / 4
        y = HEIGHT - _BOTTOM - (HEIGHT - _TOP - _BOTTOM) * i / 4
        parts.append(f'<line class="gridline" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        parts.append(
            f'<text class="tick" x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{escape(fmt(value))}</text>'
        )
    return parts


def line_chart(
    label: str,
    series: Sequence[Series],
    *,
    limits: Sequence[Limit] = (),
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
    empty: str = "No data yet",
) -> Markup:
    """A time-series chart of ``series`` with ``limits`` (``fmt`` formats the y axis)."""
    points = [p for s in series for p in s.points]
    if not points:
        return _svg(
            label, [f'<text class="tick" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{escape(empty)}</text>']
        )
    start = min(p[0] for p in points).timestamp()
    end = max(p[0] for p in points).timestamp()
    span = max(end - start, 1.0)
    top = _nice_max(max([p[1] for p in points] + [limit.value for limit in limits] + [0.0]))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM

    def xy(when: datetime, value: float) -> tuple[float, float]:
        return _LEFT + plot_w * (when.timestamp() - start) / span, HEIGHT - _BOTTOM - plot_h * max(value, 0.0) / top

    body = _axes(top, fmt)
    for tick in (0.0, 0.5, 1.0):
        moment = datetime.fromtimestamp(start + span * tick, tz=points[0][0].tzinfo)
        anchor = ("start", "middle", "end")[int(tick * 2)]
        x = _LEFT + plot_w * tick
        body.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="{anchor}">{moment:%b %d}</text>')
    for limit in limits:
        _, y = xy(datetime.fromtimestamp(start, tz=points[0][0].tzinfo), limit.value)
        body.append(f'<line class="limit" x1="{_LEFT}" x2="{WIDTH - _RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
        x = WIDTH - _RIGHT - 4
        name = escape(limit.label)
        body.append(f'<text class="limit-label" x="{x}" y="{y - 4:.1f}" text-anchor="end">{name}</text>')
    for s in series:
        if not s.points:
            continue
        coords = [xy(when, value) for when, value in s.points]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in coords)
        if s.area and len(coords) > 1:
            base = HEIGHT - _BOTTOM
            body.append(f'<polygon class="area" points="{coords[0][0]:.1f},{base} {path} {coords[-1][0]:.1f},{base}"/>')
        if len(coords) == 1:
            body.append(f'<circle class="dot" cx="{coords[0][0]:.1f}" cy="{coords[0][1]:.1f}" r="3"/>')
        body.append(f'<polyline class="{escape(s.css)}" points="{path}"><title>{escape(s.label)}</title></polyline>')
    return _svg(label, body)


def bar_chart(
    label: str,
    bars: Sequence[tuple[str, float]],
    *,
    css: str = "bar",
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}",
    empty: str = "No data yet",
) -> Markup:
    """Vertical bars ``(label, value)`` in the given order, each with its value as a tooltip."""
    if not bars:
        return _svg(
            label, [f'<text class="tick" x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle">{escape(empty)}</text>']
        )
    top = _nice_max(max(value for _, value in bars))
    plot_w, plot_h = WIDTH - _LEFT - _RIGHT, HEIGHT - _TOP - _BOTTOM
    slot = plot_w / len(bars)
    body = _axes(top, fmt)
    every = max(1, len(bars) // 12)
    for i, (name, value) in enumerate(bars):
        h = plot_h * max(value, 0.0) / top
        x = _LEFT + slot * i + slot * 0.15
        y = HEIGHT - _BOTTOM - h
        body.append(
            f'<rect class="{escape(css)}" x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" rx="2">'
            f"<title>{escape(name)}: {escape(fmt(value))}</title></rect>"
        )
        if i % every == 0:
            cx = x + slot * 0.35
            body.append(f'<text class="tick" x="{cx:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(name)}</text>')
    return _svg(label, body)
