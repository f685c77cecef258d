"""report.html: every value as report.json holds it, sections in report order, nothing a user wrote runs."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import markupsafe
import pytest

from audit.render import render_html, render_markdown
from audit.render.html import LONG_TABLE_ROWS, format_value, metric_rows
from audit.render.overview import overview
from audit.render.svg import render_figure
from audit.report import Figure, MetricSpec, Report, Section, Series, Table, metric_segment
from tests.conftest import make_loans, read_report, run_audit

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b"]
RAW_HTML = re.compile(r"<\s*/?\s*(script|img)", re.IGNORECASE)
TEMPLATE = (Path(__file__).parent.parent / "audit" / "render" / "report.html.j2").read_text()
OWN_SCRIPT = TEMPLATE.rsplit("<script>", 1)[1]  # the template ends with its script: nothing rendered in it


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
    assert positions == sorted(positions) and page.index('id="provenance"') > positions[-1]
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
    page = render_html(report.to_dict())
    assert '<div class="verdict fail">✘ Do not ship: the release gate failed' in page
    assert page.index('id="summary"') < page.index('class="verdict') < page.index('id="section-gate"')


def test_no_user_string_reaches_the_page_as_html():
    for value in HOSTILE:
        report = _report(groups=(value, "M"), text=value, data_name=value)
        page = render_html(report)
        assert not RAW_HTML.search(_without_own_script(page))
        assert page.count(html.escape(value, quote=False)) >= 5  # shown as text: data, table, notes, figure
    page = render_html(_report(groups=(HOSTILE[0], HOSTILE[1]), text=HOSTILE[1], data_name=HOSTILE[0]))
    assert not RAW_HTML.search(_without_own_script(page))


def _without_own_script(page: str) -> str:
    """The page without its one inline script (the metric filter), which must be the template's, unchanged."""
    body, script = page.rsplit("<script>", 1)
    assert script.rstrip() == OWN_SCRIPT.rstrip()  # no user string made its way into the script
    return body


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


# --- in a real browser: Debian's chromium, headless, network cut --------------------------------------------

CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium installed (apt-get install chromium)"
)
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root in a container
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--proxy-server=127.0.0.1:9",  # the network cut: every http(s) request goes to a closed port ...
    "--host-resolver-rules=MAP * ~NOTFOUND",  # ... and no name resolves
    "--enable-logging=stderr",
    "--v=0",
    "--window-size=1280,900",
]
# Injected first in <head>: records every script error, failed resource load and console.error of the page.
PROBE_HEAD = (
    "<script>window.__errors=[];window.addEventListener('error',function(e){window.__errors.push("
    "String(e.message||(e.target&&(e.target.src||e.target.href))))},true);var __ce=console.error;"
    "console.error=function(){window.__errors.push(Array.prototype.join.call(arguments,' '));"
    "__ce.apply(console,arguments)};</script>"
)
# Injected last: after load, measures #summary, types "accuracy" into the filter, writes the facts into the DOM.
PROBE_TAIL = """<script>window.addEventListener("load", function () {
  var box = document.getElementById("summary").getBoundingClientRect();
  var filter = document.getElementById("metric-filter");
  filter.value = "accuracy"; filter.dispatchEvent(new Event("input"));
  var rows = Array.prototype.slice.call(document.querySelectorAll("#metrics tr"), 1);
  var out = document.createElement("pre"); out.id = "probe";
  out.textContent = JSON.stringify({
    summary_bottom: box.bottom + window.scrollY, page_width: document.documentElement.scrollWidth,
    errors: window.__errors, resources: performance.getEntriesByType("resource").map(function (e) { return e.name; }),
    shown: rows.filter(function (r) { return !r.hidden; }).map(function (r) { return r.cells[0].textContent; }),
    count: document.getElementById("filter-count").textContent});
  document.body.appendChild(out);
});</script>"""


def _in_chromium(page: str, folder: Path) -> tuple[dict, list[str]]:
    """Load ``page`` from a file in headless chromium; return the probe's facts and the console's lines."""
    path = folder / "page.html"
    path.write_text(
        page.replace("<head>", "<head>" + PROBE_HEAD, 1).replace("</body>", PROBE_TAIL + "</body>")
    )
    profile = folder / "profile"
    done = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", path.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
    )
    probe = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.DOTALL)
    assert probe, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(html.unescape(probe.group(1))), console


@pytest.fixture(scope="module")
def gated_run(tmp_path_factory) -> Path:
    """A real run with every built-in plugin and a policy that fails one rule (accuracy) and warns on one."""
    folder = tmp_path_factory.mktemp("gated")
    make_loans().to_csv(folder / "loans.csv", index=False)
    (folder / "policy.yaml").write_text(
        "rules:\n  - performance.accuracy >= 0.99\n  - privacy.epsilon <= 5\n"
        '  - {id: parity, metric: fairness.sex.demographic_parity_difference, op: "<=", value: 0.5}\n'
        '  - {id: floor, metric: robustness.worst_group_robust_accuracy, op: ">=", value: 0.99, severity: warn}\n'
    )
    done = run_audit(
        *("train", "--data", folder / "loans.csv", "--target", "defaulted", "--sensitive", "sex"),
        *("--dp", "--epsilon", "3", "--robustness", "--robustness-samples", "100", "--epochs", "2"),
        *("--policy", folder / "policy.yaml", "--out", folder / "run", "-q"),
    )
    assert done.returncode == 1, done.stderr  # the accuracy rule fails
    return folder / "run"


@needs_chromium
def test_the_summary_fits_the_first_screen_with_no_error_and_no_network(gated_run, tmp_path):
    report = read_report(gated_run)
    facts, console = _in_chromium((gated_run / "report.html").read_text(), tmp_path)
    assert facts["errors"] == [] and not [line for line in console if "ERROR" in line or "Uncaught" in line]
    assert facts["resources"] == []  # nothing fetched: no font, no stylesheet, no script from anywhere
    assert 0 < facts["summary_bottom"] <= 900, facts["summary_bottom"]  # the overview is one 1280x900 screen
    assert facts["page_width"] <= 1280  # and nothing forces a horizontal scroll
    accuracy = [name for name, *_ in metric_rows(report["metrics"]) if "accuracy" in name]
    assert (
        facts["shown"] == accuracy
        and facts["count"] == f"{len(accuracy)} of {len(metric_rows(report['metrics']))} metrics"
    )


@needs_chromium
def test_the_browser_check_sees_a_script_error_and_a_network_request(tmp_path):
    page = render_html(_report()).replace(
        "</body>", '<img src="http://example.invalid/x.png"><script>notDefined();</script></body>'
    )
    facts, _ = _in_chromium(page, tmp_path)
    assert any("notDefined" in e for e in facts["errors"])  # a broken script is caught ...
    assert any("example.invalid" in e for e in facts["errors"])  # ... and so is a request that had to leave


def test_the_page_leads_with_the_overview_and_ends_with_the_folded_metric_table(gated_run):
    report, page = read_report(gated_run), (gated_run / "report.html").read_text()
    ov = overview(report)
    top = page[page.index('<div id="summary">') : page.index('<nav id="toc"')]
    for area in ov["areas"]:  # every area's row: its link, its status badge, its plain-language line
        row = top[top.index(f'<a href="#{area["anchor"]}">') :].split("</tr>", 1)[0]
        assert f'<span class="badge st-{area["status"].replace(" ", "-")}">{area["status"]}</span>' in row
        # escaped as Jinja2 escapes text (quotes too: a summary line can quote a class name)
        assert str(markupsafe.escape(area["line"])) in row and f'id="{area["anchor"]}"' in page
    statuses = {a["name"]: a["status"] for a in ov["areas"]}
    assert (
        statuses["performance"] == "fail" and statuses["robustness"] == "warn"
    )  # the policy's fail and warn
    assert "Do not ship: the release gate failed" in top and "privacy" in top.lower()
    order = [page.index(mark) for mark in ('id="summary"', 'id="toc"', 'id="section-', 'id="all-metrics"')]
    assert order == sorted(order) and "<details open" not in page[order[-1] :]


def test_print_css_hides_navigation_and_the_filter_and_unfolds_tables():
    page = render_html(_report())
    print_css = page[page.index("@media print") : page.index("</style>")]
    assert "nav#toc, #filter-box { display: none; }" in print_css
    assert "details::details-content { content-visibility: visible; display: block; }" in print_css
    assert "beforeprint" in page  # browsers without ::details-content open every <details> to print
