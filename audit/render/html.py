"""HTML rendering of a report dict: one self-contained page (inline CSS and SVG, no network)."""

from __future__ import annotations

from typing import Any

import jinja2

from audit.render.overview import overview
from audit.render.svg import render_figure
from audit.report import interval_base

_ENV = jinja2.Environment(
    loader=jinja2.PackageLoader("audit.render", ""), autoescape=jinja2.select_autoescape(["html", "j2"])
)


def format_value(value: Any) -> str:
    """Numbers to 4 significant digits (integers whole); None as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e6 else f"{value:.4e}"
    return str(value)


# Tables longer than this fold away (HTML <details>): the evidence index, per-group tables of many groups.
LONG_TABLE_ROWS = 40


def cell_class(value: Any) -> str:
    """CSS class of a table cell: "num" for numbers (right-aligned), a verdict's colour, else none."""
    if isinstance(value, (int, float)) or value is None:
        return "num"
    head = str(value).split(" ", 1)[0]
    return {"PASS": "pass", "FAIL": "fail", "WARN": "warnv", "NO": "fail"}.get(head, "")


def verdict_class(verdict: str) -> str:
    """The badge class of a compliance verdict ("PASS", "NO EVIDENCE", "not gated"): lower case, dashed."""
    return verdict.lower().replace(" ", "-")


def provenance_rows(run: dict[str, Any]) -> list[tuple[str, str]]:
    """Flatten the checkable facts of ``run`` into (name, value) rows."""
    rows = [
        ("data SHA-256", run.get("data", {}).get("sha256", "")),
        ("model SHA-256", run.get("model_sha256", "")),
        ("config SHA-256", run.get("config_sha256", "")),
        ("seed", run.get("seed", "")),
        ("command line", run.get("command_line", "")),
    ]
    if run.get("policy_sha256"):
        rows.append(("policy SHA-256", run["policy_sha256"]))
    rows += [(f"version: {k}", v) for k, v in sorted(run.get("versions", {}).items())]
    return [(k, str(v)) for k, v in rows]


def metric_rows(metrics: dict[str, Any]) -> list[tuple[str, Any, Any, Any]]:
    """(name, value, 95% low, 95% high) per metric: a metric's ``.ci_low``/``.ci_high`` join its own row."""
    rows = []
    for name, value in metrics.items():
        if interval_base(name) in metrics:
            continue
        rows.append((name, value, metrics.get(f"{name}.ci_low"), metrics.get(f"{name}.ci_high")))
    return rows


def render_html(report: dict[str, Any]) -> str:
    """Return the report page for a report dict (as read from report.json)."""
    sections = [
        dict(s, figures=s.get("figures", []), tables=s.get("tables", [])) for s in report.get("sections", [])
    ]
    return _ENV.get_template("report.html.j2").render(
        run=report.get("run", {}),
        metric_rows=metric_rows(report["metrics"]),
        sections=sections,
        fmt=format_value,
        svg=render_figure,
        cell_class=cell_class,
        long_table=LONG_TABLE_ROWS,
        provenance=provenance_rows(report.get("run", {})),
        content_sha256=report.get("content_sha256", ""),
        ov=overview(report),
        badge=verdict_class,
    )
