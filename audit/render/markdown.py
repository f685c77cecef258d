"""Markdown rendering of a report dict, for a pull request or a compliance file.

Every string a run did not write itself (a file, column or group name, a table cell, a plugin's title, note
or warning) goes through ``md_escape``, so report.md and model_card.md show it and never run it.
"""

from __future__ import annotations

import html
import re
from typing import Any

from audit.render.html import LONG_TABLE_ROWS, format_value, metric_rows, provenance_rows
from audit.render.overview import overview

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_BACKTICKS = re.compile(r"`+")


def md_escape(value: Any, *, code: bool = False, cell: bool = False) -> str:
    """``value`` as inert Markdown: HTML-escaped text, or (``code``) a code span it cannot leave.

    Rules: line breaks become spaces; ``&``, ``<`` and ``>`` become entities; with ``cell``, ``|`` becomes
    ``\\|`` (a table cell, code spans included, as GFM reads them). A code span's text is shown verbatim (an
    entity would show as typed), fenced by more backticks than any run of backticks inside it, so a backtick
    in the value cannot close it; a value holding ``<`` is written as escaped text instead of a span, so no
    ``<`` of a user's ever reaches the file raw.
    """
    text = _LINE_BREAK.sub(" ", str(value))
    if code and "<" not in text:
        out = _code_span(text)
    elif code:  # shown literally: backslashes and backticks escaped, then entities
        out = html.escape(text.replace("\\", "\\\\").replace("`", "\\`"), quote=False)
    else:
        out = html.escape(text, quote=False)
    return out.replace("|", "\\|") if cell else out


def _code_span(text: str) -> str:
    """``text`` in a code span whose fence is longer than any run of backticks in it."""
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    spaced = text.startswith(" ") and text.endswith(" ") and text.strip()
    pad = " " if text.startswith("`") or text.endswith("`") or spaced else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _table(columns: list[Any], rows: list[list[Any]]) -> list[str]:
    """A Markdown table; every cell escaped, numbers formatted as in report.html."""
    lines = ["| " + " | ".join(md_escape(c, cell=True) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(md_escape(format_value(v), cell=True) for v in row) + " |" for row in rows]
    return lines


def overview_lines(report: dict[str, Any]) -> list[str]:
    """The report's overview (``audit.render.overview``) as Markdown: verdict, areas, warnings, clauses."""
    ov = overview(report)
    lines = ["## Summary", "", f"**{md_escape(ov['verdict']['text'])}**", ""]
    rows = [
        [
            a["title"],
            _figure_text(a["figure"]),
            a["line"],
            a["status"].upper() + (f" ({a['reason']})" if a["reason"] else ""),
        ]
        for a in ov["areas"]
    ]
    lines += _table(["area", "headline (95% interval)", "what it means", "status"], rows)
    shown = [f"- {md_escape(w['title'])}: {md_escape(w['text'])}" for w in ov["warnings"]]
    if ov["more_warnings"]:
        shown.append(f"- and {ov['more_warnings']} more, in their sections")
    lines += ["", "Warnings:", "", *shown] if shown else ["", "The audit raised no warnings."]
    if ov["compliance"]:
        clauses = [[c["id"], c["metrics"], c["verdict"]] for c in ov["compliance"]]
        lines += ["", "Compliance evidence per clause:", ""] + _table(
            ["clause", "metrics", "verdict"], clauses
        )
    return lines


def _figure_text(figure: dict[str, Any] | None) -> str:
    """'label value (low to high)' for an area's headline figure; a dash without one."""
    if figure is None:
        return "—"
    interval = figure["interval"]
    span = f" ({format_value(interval[0])} to {format_value(interval[1])})" if interval else ""
    return f"{figure['label']} {format_value(figure['value'])}{span}"


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    """Every metric with its value; a metric's 95% interval in its own row."""
    rows = [
        [name, value, "" if low is None and high is None else f"{format_value(low)} to {format_value(high)}"]
        for name, value, low, high in metric_rows(metrics)
    ]
    return _table(["metric", "value", "95% interval"], rows)


def _section(section: dict[str, Any]) -> list[str]:
    """A section: title, warnings, notes, then its tables (a long one folded in <details>)."""
    lines = ["", f"## {md_escape(section['title'])}", ""]
    lines += [f"> **Warning:** {md_escape(w)}" for w in section.get("warnings", [])]
    lines += [f"- {md_escape(line)}" for line in section.get("summary", [])]
    lines += [f"- {md_escape(n)}" for n in section.get("notes", [])]
    for t in section.get("tables", []):
        title, rows = md_escape(t["title"]), t["rows"]
        if len(rows) > LONG_TABLE_ROWS:  # GitHub renders <details> folded
            lines += ["", f"<details><summary>{title} ({len(rows)} rows)</summary>", ""]
            lines += _table(t["columns"], rows) + ["", "</details>"]
        else:
            lines += ["", f"### {title}", ""] + _table(t["columns"], rows)
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """Return the report as Markdown: the summary, each section (warnings, findings, notes, tables), all metrics."""
    run = report.get("run", {})
    facts = ", ".join(
        [
            f"Data {md_escape(run.get('data', {}).get('name', '?'), code=True)}",
            f"seed {md_escape(run.get('seed'))}",
            f"device {md_escape(run.get('device'))}",
            f"started {md_escape(run.get('started_at'))}.",
        ]
    )
    lines = [
        "# rai-audit report",
        "",
        facts,
        "",
        f"Command: {md_escape(run.get('command_line', ''), code=True)}",
        "",
    ]
    lines += overview_lines(report)
    for section in report.get("sections", []):
        lines += _section(section)
    lines += ["", "## Provenance", ""] + _table(["fact", "value"], [list(r) for r in provenance_rows(run)])
    lines += ["", "## All metrics", ""] + _metrics_table(report["metrics"])
    lines += ["", f"Report content SHA-256: {md_escape(report.get('content_sha256', ''), code=True)}", ""]
    return "\n".join(lines)
