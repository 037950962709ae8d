"""The server-drawn SVG charts: readable axes, escaped text, the empty state, projections and limits."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from controlplane.web.charts import Limit, Series, bar_chart, line_chart

START = datetime(2026, 11, 1, tzinfo=UTC)


def _ticks(svg: str) -> list[str]:
    return re.findall(r'<text class="tick" x="\d+" y="[\d.]+" text-anchor="end">([^<]*)</text>', svg)


def test_small_or_empty_series_get_whole_distinct_ticks() -> None:
    for top in (0.0, 1.0, 2.0, 3.0):
        svg = str(bar_chart("tenants", [("a", top), ("b", 0.0)]))
        assert _ticks(svg) == ["0", "1", "2", "3", "4"], top
    assert _ticks(str(bar_chart("big", [("a", 99.0)]))) == ["0", "25", "50", "75", "100"]


def test_labels_are_escaped_and_the_chart_is_labelled_for_screen_readers() -> None:
    svg = str(line_chart('<script>x</script>"', [Series("s<b>", [(START, 1.0), (START + timedelta(days=1), 2.0)])]))
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "s&lt;b&gt;" in svg
    assert 'role="img"' in svg and "<title>&lt;script&gt;x&lt;/script&gt;&#x27;" not in svg


def test_an_empty_chart_says_so() -> None:
    assert "No data yet" in str(line_chart("growth", [Series("bytes", [])]))
    assert "nothing" in str(bar_chart("requests", [], empty="nothing"))


def test_a_projection_is_dashed_and_a_limit_is_drawn_with_its_label_within_the_axis() -> None:
    history = Series("bytes", [(START + timedelta(days=d), d * 10.0) for d in range(10)], area=True)
    projection = Series(
        "projection", [(START + timedelta(days=9), 90.0), (START + timedelta(days=20), 200.0)], css="projection"
    )
    svg = str(line_chart("growth", [history, projection], limits=[Limit("quota", 150.0)]))
    assert svg.count('class="projection"') == 1 and 'class="area"' in svg
    assert 'class="limit"' in svg and ">quota</text>" in svg
    assert _ticks(svg)[-1] == "200"  # the axis covers the projection and the quota
