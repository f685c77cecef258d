"""Inline SVG charts (no plotting library, no network): lines for curves, bars with interval whiskers."""

from __future__ import annotations

from html import escape
from typing import Any

WIDTH, HEIGHT, PAD_L, PAD_R, PAD_T, PAD_B = 560, 300, 60, 130, 30, 45
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi == lo:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def render_figure(figure: dict[str, Any]) -> str:
    """Return an <svg> element for a report figure (dict form of ``audit.report.Figure``)."""
    series = figure["series"]
    values = [v for s in series for key in ("y", "low", "high") for v in (s.get(key) or []) if v is not None]
    if not values:
        return f"<p><em>{escape(figure['title'])}: no data</em></p>"
    y_lo, y_hi = min(values + [0.0]) if figure["kind"] == "bar" else min(values), max(values)
    if y_hi == y_lo:
        y_hi = y_lo + 1.0
    plot_w, plot_h = WIDTH - PAD_L - PAD_R, HEIGHT - PAD_T - PAD_B
    categorical = figure["kind"] == "bar" or any(isinstance(x, str) for s in series for x in s["x"])
    xs_all = list(dict.fromkeys(x for s in series for x in s["x"]))
    if categorical:

        def x_pos(x: Any) -> float:
            return PAD_L + plot_w * (xs_all.index(x) + 0.5) / len(xs_all)
    else:
        x_lo, x_hi = min(xs_all), max(xs_all)
        span = (x_hi - x_lo) or 1.0

        def x_pos(x: Any) -> float:
            return PAD_L + plot_w * (x - x_lo) / span

    def y_pos(y: float) -> float:
        return PAD_T + plot_h * (1 - (y - y_lo) / (y_hi - y_lo))

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{escape(figure["title"])}">',
        f'<text x="{WIDTH / 2}" y="18" text-anchor="middle" font-weight="bold">{escape(figure["title"])}</text>',
        f'<line x1="{PAD_L}" y1="{PAD_T + plot_h}" x2="{PAD_L + plot_w}" y2="{PAD_T + plot_h}" stroke="#333"/>',
        f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{PAD_T + plot_h}" stroke="#333"/>',
    ]
    for tick in _ticks(y_lo, y_hi):
        parts.append(
            f'<text x="{PAD_L - 5}" y="{y_pos(tick) + 4:.1f}" text-anchor="end" font-size="10">{tick:.3g}</text>'
        )
    for x in xs_all if categorical else _ticks(min(xs_all), max(xs_all)):
        label = x if categorical else f"{x:.3g}"
        parts.append(
            f'<text x="{x_pos(x):.1f}" y="{PAD_T + plot_h + 14}" text-anchor="middle" font-size="10">{escape(str(label))[:14]}</text>'
        )
    parts.append(
        f'<text x="{PAD_L + plot_w / 2}" y="{HEIGHT - 8}" text-anchor="middle" font-size="11">{escape(figure["x_label"])}</text>'
    )
    parts.append(
        f'<text x="14" y="{PAD_T + plot_h / 2}" text-anchor="middle" font-size="11" transform="rotate(-90 14 {PAD_T + plot_h / 2})">{escape(figure["y_label"])}</text>'
    )
    n = len(series)
    for i, s in enumerate(series):
        color = COLORS[i % len(COLORS)]
        points = [(x, y) for x, y in zip(s["x"], s["y"]) if y is not None]
        if figure["kind"] == "bar":
            slot = plot_w / max(len(xs_all), 1) * 0.8
            bar_w = slot / n
            for j, (x, y) in enumerate(zip(s["x"], s["y"])):
                if y is None:
                    continue
                left = x_pos(x) - slot / 2 + i * bar_w
                top, base = y_pos(max(y, 0)), y_pos(min(y, 0))
                parts.append(
                    f'<rect x="{left:.1f}" y="{top:.1f}" width="{bar_w * 0.9:.1f}" height="{base - top:.1f}" fill="{color}"><title>{escape(str(x))}: {y:.4g}</title></rect>'
                )
                if s.get("low") and s.get("high") and s["low"][j] is not None and s["high"][j] is not None:
                    cx = left + bar_w * 0.45
                    parts.append(
                        f'<line x1="{cx:.1f}" y1="{y_pos(s["low"][j]):.1f}" x2="{cx:.1f}" y2="{y_pos(s["high"][j]):.1f}" stroke="#000"/>'
                    )
        else:
            path = " ".join(f"{x_pos(x):.1f},{y_pos(y):.1f}" for x, y in points)
            parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
            for x, y in points:
                parts.append(
                    f'<circle cx="{x_pos(x):.1f}" cy="{y_pos(y):.1f}" r="3" fill="{color}"><title>{escape(s["name"])} @ {x}: {y:.4g}</title></circle>'
                )
        parts.append(
            f'<rect x="{WIDTH - PAD_R + 10}" y="{PAD_T + 16 * i}" width="10" height="10" fill="{color}"/>'
            f'<text x="{WIDTH - PAD_R + 24}" y="{PAD_T + 9 + 16 * i}" font-size="11">{escape(s["name"])[:18]}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
