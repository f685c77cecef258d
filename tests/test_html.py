"""report.html: every value as report.json holds it, sections in report order, nothing a user wrote runs."""

from __future__ import annotations

import html
import re

from audit.render import render_html, render_markdown
from audit.render.html import LONG_TABLE_ROWS, format_value
from audit.render.svg import render_figure
from audit.report import Figure, MetricSpec, Report, Section, Series, Table, metric_segment
from tests.conftest import read_report

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b"]
RAW_HTML = re.compile(r"<\s*/?\s*(script|img)", re.IGNORECASE)


def _report(groups: tuple[str, str] = ("F", "M"), text: str = "plain", data_name: str = "loans.csv") -> dict:
    """A small report: sections added out of order, intervals, a long table, a bar and a line figure."""
    report = Report(
        run={
            "name": "demo",
            "seed": 3,
            "device": "cpu",
            "started_at": "2025-01-01T00:00:00+00:00",
            "command_line": f"audit train --data {data_name}",
            "data": {"name": data_name, "sha256": "ab" * 32},
        }
    )
    fairness = Section(
        "fairness", "Fairness", order=50, warnings=[f"warning about {text}"], notes=[f"note {text}"]
    )
    fairness.add_metric(f"{metric_segment(groups[0])}&{metric_segment(groups[1])}.gap", 0.125)
    fairness.tables.append(Table("Groups", ["group", text], [[g, 0.5] for g in groups]))
    fairness.tables.append(
        Table("Every row", ["row", "value"], [[i, i / 8] for i in range(LONG_TABLE_ROWS + 1)])
    )
    fairness.figures.append(
        Figure(f"Rates {text}", "bar", "group", "rate", [Series(text, list(groups), [0.2, 0.4])])
    )
    performance = Section("performance", "Performance", order=10, summary=[f"summary {text}"])
    performance.add_proportion("accuracy", 87, 100)
    performance.add_metric("log_loss", 0.3125)
    performance.add_metric("missing", None)
    performance.figures.append(Figure("Loss", "line", "epoch", "loss", [Series("train", [1, 2], [0.7, 0.5])]))
    report.add_section(fairness)
    report.add_section(performance)
    report.mark_headlines([MetricSpec("performance.accuracy", True, "", "", headline=True)])
    return report.to_dict()


def _shown(page: str) -> dict[str, str]:
    """Metric name -> the text of its ``data-metric`` element."""
    return {
        html.unescape(k): html.unescape(v) for k, v in re.findall(r'data-metric="([^"]+)">([^<]*)<', page)
    }


def test_every_metric_value_is_in_its_data_metric_cell_as_the_json_holds_it():
    report = _report()
    assert _shown(render_html(report)) == {name: format_value(v) for name, v in report["metrics"].items()}
    assert "fairness.F&M.gap" in report["metrics"]  # a name with an escaped character found its cell too


def test_a_metric_interval_sits_in_the_metric_row():
    report, page = _report(), render_html(_report())
    m = report["metrics"]
    row = next(r for r in page.split("<tr>") if 'data-metric="performance.accuracy"' in r)
    for bound in ("ci_low", "ci_high"):
        name = f"performance.accuracy.{bound}"
        assert f'<span data-metric="{name}">{format_value(m[name])}</span>' in row
    assert "<td>performance.accuracy.ci_low</td>" not in page  # no row of its own
    log_loss = next(r for r in page.split("<tr>") if 'data-metric="performance.log_loss"' in r)
    assert "ci_low" not in log_loss and "<td>—</td>" not in log_loss
    assert '<td data-metric="performance.missing">—</td>' in page  # no value: a dash, not "None"


def test_sections_follow_report_order_with_their_warnings_and_notes():
    report = _report()
    page = render_html(report)
    names = [s["name"] for s in report["sections"]]
    assert names == ["performance", "fairness"]  # sorted by order, not by when they were added
    positions = [page.index(f'id="section-{name}"') for name in names]
    assert positions == sorted(positions) and page.index("Provenance") > positions[-1]
    fairness = page[positions[1] :]
    assert (
        '<div class="warn">⚠ warning about plain</div>' in fairness
        and '<p class="note">note plain</p>' in fairness
    )


def test_a_long_table_is_folded_and_a_short_one_is_not():
    page = render_html(_report())
    assert f"<details><summary>Every row ({LONG_TABLE_ROWS + 1} rows)</summary>" in page
    assert "<h3>Groups</h3>" in page and "<summary>Groups" not in page
    assert '<td class="num">0.125</td>' in page  # numbers right-aligned, formatted as everywhere


def test_figures_are_inline_svg_drawn_from_the_figure_data():
    report = _report()
    page = render_html(report)
    figures = [f for s in report["sections"] for f in s["figures"]]
    assert page.count("<svg ") == len(figures) == 2
    assert all(render_figure(f) in page for f in figures)
    assert not re.search(r"(src|href)=\"https?://", page)  # self-contained


def test_gate_verdict_heads_the_page():
    report = Report(run={})
    gate = Section("gate", "Release gate", order=90)
    gate.add_metric("passed", 0)
    report.add_section(gate)
    assert 'Gate: <span class="fail">FAIL</span>' in render_html(report.to_dict())


def test_no_user_string_reaches_the_page_as_html():
    for value in HOSTILE:
        report = _report(groups=(value, "M"), text=value, data_name=value)
        page = render_html(report)
        assert not RAW_HTML.search(page)
        assert page.count(html.escape(value, quote=False)) >= 5  # shown as text: data, table, notes, figure
    assert not RAW_HTML.search(
        render_html(_report(groups=(HOSTILE[0], HOSTILE[1]), text=HOSTILE[1], data_name=HOSTILE[0]))
    )


def test_format_value_reads_as_a_person_expects():
    assert [format_value(v) for v in (None, 3, True, 0.123456, 1234567.0, "x")] == [
        "—",
        "3",
        "True",
        "0.1235",
        "1.2346e+06",
        "x",
    ]


def test_html_is_self_contained_and_shows_the_json_values(cli, tmp_path):
    out = tmp_path / "run"
    assert (
        cli(
            "train",
            "--sensitive",
            "sex",
            "--epochs",
            "2",
            "--robustness",
            "--robustness-samples",
            "100",
            "--out",
            out,
            "-q",
        ).code
        == 0
    )
    report = read_report(out)
    html = (out / "report.html").read_text()
    assert not re.search(r"(src|href)=\"https?://", html)
    for section in report["sections"]:
        assert f'id="section-{section["name"]}"' in html
    shown = dict(re.findall(r'data-metric="([^"]+)">([^<]*)<', html))
    assert shown == {
        name: format_value(value) for name, value in report["metrics"].items()
    }  # every metric, exactly as in the JSON
    assert "<svg" in html
    markdown = (out / "report.md").read_text()
    m = report["metrics"]
    assert (
        f"| performance.accuracy | {format_value(m['performance.accuracy'])} | "
        f"{format_value(m['performance.accuracy.ci_low'])} "
        f"to {format_value(m['performance.accuracy.ci_high'])} |"
    ) in markdown
    assert "| performance.accuracy.ci_low |" not in markdown  # an interval sits in its metric's row
    assert render_html(report) == html and render_markdown(report) == markdown
