"""Inline SVG charts (no plotting library, no network): lines for curves, bars with interval whiskers."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 560, 300, 60, 130, 30, 45
PLOT_W, PLOT_H = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """``n`` evenly spaced tick values from ``lo`` to ``hi`` (one when they are equal)."""
    if hi == lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _text(value: Any, limit: int) -> str:
    """``value`` as SVG text: cut to ``limit`` characters, then escaped (so no entity is cut in half)."""
    return escape(str(value)[:limit])


@dataclass(frozen=True)
class _Scale:
    """Data to pixels: the y range, and the x values (categories in order of appearance, or numbers)."""

    y_lo: float
    y_hi: float
    xs: list[Any]
    categorical: bool

    def x(self, x: Any) -> float:
        """Pixel column of ``x``: a category's slot centre, or a number's place between the extremes."""
        if self.categorical:
            return PAD_L + PLOT_W * (self.xs.index(x) + 0.5) / len(self.xs)
        x_lo = min(self.xs)
        return PAD_L + PLOT_W * (x - x_lo) / ((max(self.xs) - x_lo) or 1.0)

    def y(self, y: float) -> float:
        """Pixel row of ``y``."""
        return PAD_T + PLOT_H * (1 - (y - self.y_lo) / (self.y_hi - self.y_lo))

    def x_ticks(self) -> list[Any]:
        """Where the x axis is labelled: every category, or five evenly spaced numbers."""
        return self.xs if self.categorical else _ticks(min(self.xs), max(self.xs))


def _scale(figure: dict[str, Any]) -> _Scale | None:
    """The figure's scale; None when it has no value to draw. Bars always include 0."""
    series = figure["series"]
    values = [v for s in series for key in ("y", "low", "high") for v in (s.get(key) or []) if v is not None]
    if not values:
        return None
    y_lo, y_hi = min(values + [0.0]) if figure["kind"] == "bar" else min(values), max(values)
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    categorical = figure["kind"] == "bar" or any(isinstance(x, str) for s in series for x in s["x"])
    xs = list(dict.fromkeys(x for s in series for x in s["x"]))
    return _Scale(y_lo, y_hi, xs, categorical)


def _frame(figure: dict[str, Any]) -> list[str]:
    """The opening <svg> tag, the title and the two axis lines."""
    title = escape(figure["title"])
    bottom = PAD_T + PLOT_H
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{title}">',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{title}</text>',
        f'<line x1="{PAD_L}" y1="{bottom}" x2="{PAD_L + PLOT_W}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{bottom}" stroke="#333"/>',
    ]


def _axes(figure: dict[str, Any], scale: _Scale) -> list[str]:
    """Tick labels on both axes and the two axis titles."""
    parts = [
        f'<text x="{PAD_L - 5}" y="{scale.y(tick) + 4:.1f}" text-anchor="end" font-size="10">'
        f"{tick:.3g}</text>"
        for tick in _ticks(scale.y_lo, scale.y_hi)
    ]
    for x in scale.x_ticks():
        label = _text(x if scale.categorical else f"{x:.3g}", 14)
        parts.append(
            f'<text x="{scale.x(x):.1f}" y="{PAD_T + PLOT_H + 14}" text-anchor="middle" font-size="10">'
            f"{label}</text>"
        )
    middle = PAD_T + PLOT_H / 2
    parts.append(
        f'<text x="{PAD_L + PLOT_W / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11">'
        f"{escape(figure['x_label'])}</text>"
    )
    parts.append(
        f'<text x="14" y="{middle}" text-anchor="middle" font-size="11" transform="rotate(-90 14 {middle})">'
        f"{escape(figure['y_label'])}</text>"
    )
    return parts


def _bars(series: dict[str, Any], index: int, count: int, scale: _Scale, color: str) -> list[str]:
    """Series ``index`` of ``count`` as bars side by side in each category slot, with interval whiskers."""
    slot = PLOT_W / max(len(scale.xs), 1) * 0.8
    bar_w = slot / count
    low, high = series.get("low"), series.get("high")
    parts = []
    for j, (x, y) in enumerate(zip(series["x"], series["y"])):
        if y is None:
            continue
        left = scale.x(x) - slot / 2 + index * bar_w
        top, base = scale.y(max(y, 0)), scale.y(min(y, 0))
        parts.append(
            f'<rect x="{left:.1f}" y="{top:.1f}" width="{bar_w * 0.9:.1f}" height="{base - top:.1f}" '
            f'fill="{color}"><title>{escape(str(x))}: {y:.4g}</title></rect>'
        )
        if low and high and low[j] is not None and high[j] is not None:
            cx = left + bar_w * 0.45
            parts.append(
                f'<line x1="{cx:.1f}" y1="{scale.y(low[j]):.1f}" x2="{cx:.1f}" y2="{scale.y(high[j]):.1f}" '
                'stroke="#000"/>'
            )
    return parts


def _line(series: dict[str, Any], scale: _Scale, color: str) -> list[str]:
    """A series as a polyline through its defined points, each point a dot with its value as a tooltip."""
    points = [(x, y) for x, y in zip(series["x"], series["y"]) if y is not None]
    path = " ".join(f"{scale.x(x):.1f},{scale.y(y):.1f}" for x, y in points)
    parts = [f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>']
    name = escape(series["name"])
    parts += [
        f'<circle cx="{scale.x(x):.1f}" cy="{scale.y(y):.1f}" r="3" fill="{color}">'
        f"<title>{name} @ {escape(str(x))}: {y:.4g}</title></circle>"
        for x, y in points
    ]
    return parts


def _legend_entry(name: str, index: int, color: str) -> str:
    """A colour swatch and the series name, stacked right of the plot."""
    return (
        f'<rect x="{WIDTH - PAD_R + 10}" y="{PAD_T + 16 * index}" width="10" height="10" fill="{color}"/>'
        f'<text x="{WIDTH - PAD_R + 24}" y="{PAD_T + 9 + 16 * index}" font-size="11">{_text(name, 18)}</text>'
    )


def render_figure(figure: dict[str, Any]) -> str:
    """Return an <svg> element for a report figure (dict form of ``audit.report.Figure``)."""
    scale = _scale(figure)
    if scale is None:
        return f"<p><em>{escape(figure['title'])}: no data</em></p>"
    parts = _frame(figure) + _axes(figure, scale)
    series = figure["series"]
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        if figure["kind"] == "bar":
            parts += _bars(s, i, len(series), scale, color)
        else:  # a scatter is a line figure without the polyline (its first element): dots only
            parts += _line(s, scale, color)[1 if figure["kind"] == "scatter" else 0 :]
        parts.append(_legend_entry(s["name"], i, color))
    parts.append("</svg>")
    return "".join(parts)
