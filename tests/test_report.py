"""The report: JSON round trip, atomic writes, and HTML/Markdown values that come from report.json."""

import json
import re

from audit.render import render_html, render_markdown
from audit.render.html import format_value
from audit.report import Figure, Report, Section, Series, content_digest
from tests.conftest import read_report


def test_round_trip_and_digest():
    report = Report(run={"seed": 1})
    section = Section("performance", "Performance")
    section.add_metric("accuracy", 0.9)
    section.add_metric("nan_metric", float("nan"))
    section.figures.append(Figure("f", "line", "x", "y", [Series("s", [1, 2], [0.1, 0.2])]))
    report.add_section(section)
    data = report.to_dict()
    assert data["metrics"]["performance.nan_metric"] is None
    assert data["content_sha256"] == content_digest(data)
    again = Report.from_dict(json.loads(json.dumps(data))).to_dict()
    assert again == data


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
        f"| performance.accuracy | {format_value(m['performance.accuracy'])} | {format_value(m['performance.accuracy.ci_low'])} "
        f"to {format_value(m['performance.accuracy.ci_high'])} |"
    ) in markdown
    assert "| performance.accuracy.ci_low |" not in markdown  # an interval sits in its metric's row
    assert render_html(report) == html and render_markdown(report) == markdown
