"""Inline SVG figures: every value drawn where the scale puts it, every user string escaped."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from audit.render.svg import HEIGHT, PAD_B, PAD_L, PAD_R, PAD_T, WIDTH, render_figure

SVG = "{http://www.w3.org/2000/svg}"
LEFT, RIGHT, TOP, BOTTOM = PAD_L, WIDTH - PAD_R, PAD_T, HEIGHT - PAD_B
HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b"]


def _figure(kind: str, series: list[dict], title: str = "Accuracy by group") -> dict:
    return {"title": title, "kind": kind, "x_label": "epsilon", "y_label": "accuracy", "series": series}


def _parse(svg: str) -> ET.Element:
    """The figure as XML: it must be well-formed on its own (it is also saved and embedded)."""
    return ET.fromstring(svg)


def _titles(root: ET.Element, tag: str) -> list[str]:
    return [
        el.find(f"{SVG}title").text for el in root.iter(f"{SVG}{tag}") if el.find(f"{SVG}title") is not None
    ]


def test_line_points_sit_on_the_scale_with_their_values_as_tooltips():
    svg = render_figure(_figure("line", [{"name": "pgd", "x": [0, 0.5, 1], "y": [0.0, None, 1.0]}]))
    root = _parse(svg)
    circles = list(root.iter(f"{SVG}circle"))
    assert [(float(c.get("cx")), float(c.get("cy"))) for c in circles] == [(LEFT, BOTTOM), (RIGHT, TOP)]
    assert _titles(root, "circle") == ["pgd @ 0: 0", "pgd @ 1: 1"]  # the missing point is not drawn
    (polyline,) = root.iter(f"{SVG}polyline")
    assert polyline.get("points") == f"{LEFT:.1f},{BOTTOM:.1f} {RIGHT:.1f},{TOP:.1f}"
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert texts[0] == "Accuracy by group" and "epsilon" in texts and "accuracy" in texts and "pgd" in texts


def test_bars_one_per_value_with_whiskers_only_where_both_bounds_exist():
    series = [
        {"name": "selection rate", "x": ["F", "M"], "y": [0.2, 0.4], "low": [0.1, 0.3], "high": [0.3, None]},
        {"name": "base rate", "x": ["F", "M"], "y": [0.25, None]},
    ]
    root = _parse(render_figure(_figure("bar", series)))
    assert _titles(root, "rect") == ["F: 0.2", "M: 0.4", "F: 0.25"]
    whiskers = [line for line in root.iter(f"{SVG}line") if line.get("stroke") == "#000"]
    assert len(whiskers) == 1
    low, high = (float(whiskers[0].get(k)) for k in ("y1", "y2"))  # the range runs from 0 (bars) to 0.4
    assert low == pytest.approx(BOTTOM - (BOTTOM - TOP) * 0.1 / 0.4, abs=0.06)  # drawn to 0.1 px
    assert high == pytest.approx(BOTTOM - (BOTTOM - TOP) * 0.3 / 0.4, abs=0.06)  # drawn to 0.1 px
    legend = [t.text for t in root.iter(f"{SVG}text")][-2:]
    assert legend == ["selection rate", "base rate"]


def test_negative_bars_hang_from_zero():
    root = _parse(render_figure(_figure("bar", [{"name": "gap", "x": ["a", "b"], "y": [-1.0, 1.0]}])))
    down, up = (r for r in root.iter(f"{SVG}rect") if r.find(f"{SVG}title") is not None)
    zero = (TOP + BOTTOM) / 2
    assert float(down.get("y")) == zero and float(down.get("y")) + float(down.get("height")) == BOTTOM
    assert float(up.get("y")) == TOP and float(up.get("y")) + float(up.get("height")) == zero


def test_a_figure_without_values_says_so():
    assert render_figure(_figure("line", [{"name": "s", "x": [1], "y": [None]}])) == (
        "<p><em>Accuracy by group: no data</em></p>"
    )


def test_every_user_string_is_escaped_and_the_svg_stays_well_formed():
    bars = [{"name": name, "x": HOSTILE, "y": [0.1, 0.2, 0.3]} for name in HOSTILE]
    lines = [{"name": name, "x": HOSTILE, "y": [0.1, 0.2, 0.3]} for name in HOSTILE]
    for figure in (_figure("bar", bars, title=HOSTILE[0]), _figure("line", lines, title=HOSTILE[1])):
        svg = render_figure(figure)
        assert not re.search(r"<(script|img)", svg, re.IGNORECASE)
        root = _parse(svg)
        assert root.get("aria-label") == figure["title"]
        tooltips = " ".join(_titles(root, "rect") + _titles(root, "circle"))
        assert all(value in tooltips for value in HOSTILE)  # shown, as text
    assert render_figure(_figure("line", [{"name": "s", "x": [1], "y": [None]}], title=HOSTILE[0])) == (
        "<p><em>&lt;script&gt;alert(1)&lt;/script&gt;: no data</em></p>"
    )


def test_long_labels_are_cut_to_their_visible_length_never_inside_an_entity():
    series = [
        {
            "name": "Female&Amer-Indian-Eskimo series",
            "x": ["Female&Amer-Indian-Eskimo", "&&&&&&&&&&&&&&&&"],
            "y": [1, 2],
        }
    ]
    root = _parse(render_figure(_figure("bar", series)))
    texts = [t.text for t in root.iter(f"{SVG}text")]
    assert "Female&Amer-In" in texts and "&" * 14 in texts  # x labels: 14 characters
    assert texts[-1] == "Female&Amer-Indian"  # the legend: 18 characters
