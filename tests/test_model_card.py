"""model_card.md: each section's summary and headline metrics under its title, in order; user text inert."""

from __future__ import annotations

import re

from audit.render import render_model_card
from audit.render.html import format_value
from audit.report import MetricSpec, Report, Section

HOSTILE = ["<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "a|b"]
RAW_HTML = re.compile(r"<\s*/?\s*(script|img)", re.IGNORECASE)
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")
HEADLINES = [
    MetricSpec("performance.accuracy", True, "", "", headline=True),
    MetricSpec("carbon.grams", False, "g", "", headline=True),
    MetricSpec("gate.passed", True, "", "", headline=True),
]


def _run(text: str = "plain", command: str = "train") -> dict:
    data = {
        "name": f"{text}.csv",
        "source": f"/data/{text}.csv",
        "sha256": "ab" * 32,
        "kind": "tabular",
        "target": f"{text} target",
        "positive_label": text,
        "sensitive": [text, "age"],
        "split": "random 70/10/20",
        "rows": {"train": 70, "val": 10, "test": 20},
        "missing_values": {text: 3},
    }
    config = {"model": "auto", "hidden": [8], "epochs": 2, "optimizer": "adam", "batch_size": 16}
    return {
        "name": f"run {text}",
        "command": command,
        "command_line": f"audit {command} --data {text}.csv",
        "seed": 3,
        "device": "cpu",
        "started_at": "2025-01-01",
        "model_sha256": "cd" * 32,
        "data": data,
        "config": config,
    }


def _report(text: str = "plain", command: str = "train", gate_passed: int = 1) -> dict:
    """Sections added out of order: a gate, a third-party section, a silent one, performance, compliance."""
    report = Report(run=_run(text, command))
    gate = Section("gate", "Release gate", order=90, summary=["gate summary"])
    gate.add_metric("passed", gate_passed)
    carbon = Section("carbon", f"Carbon {text}", order=35, summary=[f"About 1.5 g for {text}."])
    carbon.add_metric("grams", 1.5)
    carbon.warnings.append(f"estimate only, {text}")
    silent = Section("silent", "Silent", order=20)
    silent.add_metric("detail", 1.0)
    performance = Section("performance", "Performance", order=10, summary=["Accuracy 0.87 on 100 rows."])
    performance.add_proportion("accuracy", 87, 100)
    performance.add_metric("log_loss", 0.3125)
    clauses = [
        {"id": f"Clause {text}", "metrics": 2, "verdict": "PASS"},
        {"id": "Art. 15", "metrics": 0, "verdict": "NO EVIDENCE"},
    ]
    compliance = Section("compliance", "Compliance evidence", order=95, data={"clauses": clauses})
    for section in (gate, carbon, silent, performance, compliance):
        report.add_section(section)
    report.mark_headlines(HEADLINES)
    return report.to_dict()


def _part(card: str, title: str) -> str:
    """The card's text under ``## title``, up to the next heading of that level."""
    start = card.index(f"\n## {title}\n")
    end = card.find("\n## ", start + 1)
    return card[start : end if end >= 0 else len(card)]


def test_a_section_part_holds_its_summary_and_headline_metrics_with_intervals():
    report = _report()
    card = render_model_card(report)
    m = report["metrics"]
    part = _part(card, "Performance")
    low, high = (format_value(m[f"performance.accuracy.{bound}"]) for bound in ("ci_low", "ci_high"))
    interval = f"95% interval {low} to {high}"
    assert part == (
        "\n## Performance\n\n- Accuracy 0.87 on 100 rows.\n\n| metric | value |\n|---|---|\n"
        f"| `performance.accuracy` | {format_value(m['performance.accuracy'])} ({interval}) |\n"
    )
    assert "performance.log_loss" not in card  # not a headline: report.html has it
    assert "- About 1.5 g for plain.\n\n| metric | value |\n|---|---|\n| `carbon.grams` | 1.5 |" in _part(
        card, "Carbon plain"
    )


def test_measuring_sections_come_in_report_order_and_silent_ones_are_left_out():
    card = render_model_card(_report())
    headings = re.findall(r"^## (.+)$", card, re.MULTILINE)
    assert headings == [
        "Summary",
        "Model details",
        "Intended use",
        "Factors",
        "Training and evaluation data",
        "Performance",
        "Carbon plain",
        "Regulatory evidence",
        "Ethical considerations",
        "Caveats and recommendations",
        "Provenance",
    ]  # no part for the silent section, nor for the gate: its verdict closes the evidence


def test_evidence_per_clause_and_the_release_gate():
    evidence = _part(render_model_card(_report(gate_passed=0)), "Regulatory evidence")
    assert "| Clause plain | 2 | PASS |\n| Art. 15 | 0 | NO EVIDENCE |" in evidence
    assert evidence.endswith("Release gate: **FAIL**.\n")


def test_measured_facts_are_filled_and_judgement_is_left_to_a_person():
    card = render_model_card(_report())
    assert "- Model: `mlp`, hidden layers [8]" in card  # "auto" resolved for tabular data
    assert "- Trained: 2025-01-01 with seed 3, 2 epochs, optimizer adam, batch size 16, device cpu" in card
    assert "- Data: `plain.csv` from `/data/plain.csv`, SHA-256 `" + "ab" * 32 + "`" in card
    assert "- Target: `plain target`, positive label `plain`" in card
    assert "- Split: random 70/10/20; rows train 70, validation 10, test 20" in card
    assert "- Groups audited: plain, age" in card and "filled in preprocessing): plain 3" in card
    assert "- (carbon) estimate only, plain" in _part(card, "Caveats and recommendations")
    assert card.count("_[TO FILL:") == 8 and "None" not in card


def test_a_run_without_warnings_says_so():
    report = Report(run=_run())
    report.add_section(Section("performance", "Performance"))
    assert "- The audit raised no warnings." in render_model_card(report.to_dict())


def test_audited_decisions_name_no_model():
    card = render_model_card(_report(command="decisions"))
    assert "trained or loaded no model" in card and "- Model:" not in card
    assert "- Split: recorded decisions of another system, no model trained here;" in card


def test_no_user_string_reaches_the_card_as_html_or_breaks_a_table():
    for value in HOSTILE:
        card = render_model_card(_report(text=value))
        assert not RAW_HTML.search(card)
        rows = [line for line in card.splitlines() if line.startswith("|")]
        assert rows and all(len(UNESCAPED_PIPE.findall(line)) in (3, 4, 5) for line in rows)
    card = render_model_card(_report(text=HOSTILE[0]))
    assert "## Carbon &lt;script&gt;alert(1)&lt;/script&gt;" in card  # shown, as text
    assert "- Groups audited: &lt;script&gt;alert(1)&lt;/script&gt;, age" in card
    assert "| Clause &lt;script&gt;alert(1)&lt;/script&gt; | 2 | PASS |" in card


def test_a_backtick_in_a_name_stays_inside_its_code_span():
    card = render_model_card(_report(text="x` `y"))
    assert "- Target: ``x` `y target``, positive label ``x` `y``" in card
