"""Markdown rendering of a report dict, for a pull request or a compliance file."""

from __future__ import annotations

from typing import Any

from audit.render.html import LONG_TABLE_ROWS, format_value, metric_rows, provenance_rows


def _table(columns: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(str(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_value(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown: metrics, then each section's warnings, notes and tables."""
    run = report.get("run", {})
    lines = [
        "# rai-audit report",
        "",
        f"Data `{run.get('data', {}).get('name', '?')}`, seed {run.get('seed')}, device {run.get('device')}, "
        f"started {run.get('started_at')}.",
        "",
        f"Command: `{run.get('command_line', '')}`",
        "",
        "## Metrics",
        "",
    ]
    lines += _table(
        ["metric", "value", "95% interval"],
        [
            [
                name,
                value,
                "" if low is None and high is None else f"{format_value(low)} to {format_value(high)}",
            ]
            for name, value, low, high in metric_rows(report["metrics"])
        ],
    )
    for s in report.get("sections", []):
        lines += ["", f"## {s['title']}", ""]
        lines += [f"> **Warning:** {w}" for w in s.get("warnings", [])]
        lines += [f"- {n}" for n in s.get("notes", [])]
        for t in s.get("tables", []):
            if len(t["rows"]) > LONG_TABLE_ROWS:  # GitHub renders <details> folded
                lines += ["", f"<details><summary>{t['title']} ({len(t['rows'])} rows)</summary>", ""]
                lines += _table(t["columns"], t["rows"]) + ["", "</details>"]
            else:
                lines += ["", f"### {t['title']}", ""] + _table(t["columns"], t["rows"])
    lines += ["", "## Provenance", ""] + _table(["fact", "value"], [list(r) for r in provenance_rows(run)])
    lines += ["", f"Report content SHA-256: `{report.get('content_sha256', '')}`", ""]
    return "\n".join(lines)
