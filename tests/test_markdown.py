"""report.md and the Markdown escaping the renderers share: values as the JSON holds them, user text inert."""

from __future__ import annotations

import re

import pytest

from audit.render import md_escape, render_markdown, render_model_card
from audit.render.html import LONG_TABLE_ROWS, format_value
from audit.render.markdown import overview_lines
from audit.report import Report, Section, Table

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b"]
RAW_HTML = re.compile(r"<\s*/?\s*(script|img)", re.IGNORECASE)
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def _report(text: str = "plain", data_name: str = "loans.csv") -> dict:
    """Two sections added out of order; an interval, a short and a long table, a warning and a note."""
    report = Report(
        run={
            "seed": 3,
            "device": "cpu",
            "started_at": "2025-01-01",
            "command_line": f"audit train --data {data_name}",
            "data": {"name": data_name, "sha256": "ab" * 32},
        }
    )
    fairness = Section("fairness", f"Fairness {text}", order=50, warnings=[f"few rows in {text}"])
    fairness.notes.append(f"groups: {text}, M")
    fairness.add_metric("gap", 0.125)
    fairness.tables.append(Table(f"Groups {text}", ["group", text], [[text, 0.5], ["M", None]]))
    fairness.tables.append(Table("Every row", ["row"], [[i] for i in range(LONG_TABLE_ROWS + 1)]))
    performance = Section("performance", "Performance", order=10)
    performance.add_proportion("accuracy", 87, 100)
    report.add_section(fairness)
    report.add_section(performance)
    report.mark_headlines([])  # sorts the sections by order
    return report.to_dict()


def _code_span_content(span: str) -> str:
    """What a CommonMark reader shows for ``span``: up to the first closing fence of the opening's length."""
    fence = re.match(r"`+", span).group()
    rest = span[len(fence) :]
    close = re.search(rf"(?<!`)`{{{len(fence)}}}(?!`)", rest)
    content = rest[: close.start()]
    assert close.end() == len(rest)  # the span ends where the value ends: nothing was left outside it
    if content.startswith(" ") and content.endswith(" ") and content.strip():
        content = content[1:-1]
    return content


def test_md_escape_makes_text_inert():
    assert md_escape("<b>R&D</b>") == "&lt;b&gt;R&amp;D&lt;/b&gt;"
    assert md_escape("a|b") == "a|b" and md_escape("a|b", cell=True) == "a\\|b"
    assert md_escape("two\nlines\r\nhere") == "two lines here"  # a line break would end a table row
    assert md_escape(None) == "None" and md_escape(0.5) == "0.5"


@pytest.mark.parametrize("value", ["sex&race", "a`b", "``x", "x`", "` `", "```", " padded "])
def test_a_code_span_shows_its_value_verbatim_and_cannot_be_left(value):
    span = md_escape(value, code=True)
    assert _code_span_content(span) == value


def test_a_value_with_a_tag_leaves_the_code_span_for_escaped_text():
    assert md_escape("<img src=x>`", code=True) == "&lt;img src=x&gt;\\`"
    assert md_escape("a|b", code=True, cell=True) == "`a\\|b`"  # GFM reads \| as | inside a cell's code span


def test_metrics_carry_their_interval_in_their_own_row():
    report = _report()
    markdown = render_markdown(report)
    m = report["metrics"]
    assert (
        f"| performance.accuracy | {format_value(m['performance.accuracy'])} | "
        f"{format_value(m['performance.accuracy.ci_low'])} "
        f"to {format_value(m['performance.accuracy.ci_high'])} |"
    ) in markdown
    assert "| fairness.gap | 0.125 |  |" in markdown and "| performance.accuracy.ci_low |" not in markdown


def test_sections_follow_report_order_with_warnings_notes_and_tables():
    markdown = render_markdown(_report())
    headings = re.findall(r"^## (.+)$", markdown, re.MULTILINE)
    assert headings == ["Summary", "Performance", "Fairness plain", "Provenance", "All metrics"]
    fairness = markdown[markdown.index("## Fairness plain") : markdown.index("## Provenance")]
    assert "> **Warning:** few rows in plain" in fairness and "- groups: plain, M" in fairness
    assert "### Groups plain\n\n| group | plain |\n|---|---|\n| plain | 0.5 |\n| M | — |" in fairness


def test_a_long_table_is_folded():
    markdown = render_markdown(_report())
    folded = markdown[markdown.index(f"<details><summary>Every row ({LONG_TABLE_ROWS + 1} rows)</summary>") :]
    assert folded.index(f"| {LONG_TABLE_ROWS} |") < folded.index("</details>")
    assert "### Every row" not in markdown


def test_no_user_string_reaches_report_md_as_html_or_breaks_a_table():
    for value in HOSTILE:
        markdown = render_markdown(_report(text=value, data_name=value))
        assert not RAW_HTML.search(markdown)
        for line in markdown.splitlines():
            if line.startswith("|"):  # every row of a table has as many cells as its header (4 to 1)
                assert len(UNESCAPED_PIPE.findall(line)) in (2, 3, 4, 5)
        groups = markdown[markdown.index("### Groups") :].splitlines()[2:5]
        assert len({len(UNESCAPED_PIPE.findall(line)) for line in groups}) == 1
    markdown = render_markdown(_report(text=HOSTILE[1], data_name=HOSTILE[0]))
    assert "Data &lt;script&gt;alert(1)&lt;/script&gt;, seed 3" in markdown
    assert "> **Warning:** few rows in &lt;img src=x onerror=alert(1)&gt;" in markdown


def test_a_backtick_in_a_data_name_stays_inside_its_code_span():
    markdown = render_markdown(_report(data_name="x` onerror `y.csv"))
    assert "Data ``x` onerror `y.csv``, seed 3" in markdown


def test_report_md_leads_with_the_overview_the_model_card_shares():
    report = _report()
    markdown = render_markdown(report)
    block = "\n".join(overview_lines(report))
    assert markdown.index(block) < markdown.index("## Performance")  # before every section
    assert block in render_model_card(report)  # the card leads with the very same summary
    assert "**Not gated: no release policy was given" in block
    assert "| Performance | — |  | NOT GATED |" in block  # no headline declared here: no figure, no policy
    assert "| Fairness plain | — |  | WARN (1 warning) |" in block
    assert "> **Warning:**" not in block and "- Fairness plain: few rows in plain" in block
    assert markdown.index("## All metrics") > markdown.index("## Provenance")  # the full table comes last
