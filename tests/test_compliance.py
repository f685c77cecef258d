"""The compliance section and the model card: evidence per clause, verdicts from the gate, clauses with no evidence."""

import json
from pathlib import Path

import pytest

from audit.compliance import CLAUSES, compliance_section, evidence_from_specs, spec_for
from audit.report import MetricSpec
from tests.conftest import read_report, undeclared_metrics

ROOT = Path(__file__).resolve().parents[1]

SPECS = [
    MetricSpec("performance.accuracy", True, "fraction", "accuracy", ("EU AI Act Art. 15",)),
    MetricSpec(
        "fairness.*.demographic_parity_difference", False, "rate", "dpd", ("NIST AI RMF MEASURE 2.11",)
    ),
    MetricSpec("fairness.*.group.*", None, "rate", "per group", ("NIST AI RMF MEASURE 2.11",)),
    MetricSpec("fairness.*", None, "rate", "any", ()),
]


def _rules(*rows):
    """Gate results as the gate section's payload holds them."""
    keys = ["rule", "metric", "value", "threshold", "severity", "verdict", "detail", "rationale"]
    return [dict(zip(keys, row, strict=True)) for row in rows]


def _verdicts(section):
    return {c["id"]: c["verdict"] for c in section.data["clauses"]}


def test_exact_spec_wins_and_the_longest_glob_next():
    assert spec_for("performance.accuracy", SPECS).description == "accuracy"
    assert spec_for("fairness.sex.group.F.size", SPECS).description == "per group"
    assert spec_for("fairness.sex.other", SPECS).description == "any"
    assert spec_for("carbon.kg", SPECS) is None


def test_clause_verdicts_follow_the_gate_and_missing_clauses_are_named():
    metrics = {
        "performance.accuracy": 0.8,
        "fairness.sex.demographic_parity_difference": 0.2,
        "fairness.sex.demographic_parity_difference.ci_high": 0.25,
        "fairness.sex.group.F.size": 10,
    }
    evidence = evidence_from_specs(metrics, SPECS)
    assert ("NIST AI RMF MEASURE 2.11", "fairness.sex.group.F.size", "detail") in evidence
    assert not any(name.endswith(".ci_high") for _, name, _ in evidence)
    section = compliance_section(
        metrics,
        evidence,
        _rules(
            ["acc", "performance.accuracy", 0.8, ">= 0.7", "error", "PASS", "", ""],
            [
                "dpd",
                "fairness.sex.demographic_parity_difference.ci_high",
                0.25,
                "<= 0.1",
                "error",
                "FAIL",
                "",
                "",
            ],
        ),
    )
    status = _verdicts(section)
    assert status["EU AI Act Art. 15"] == "PASS"
    assert status["NIST AI RMF MEASURE 2.11"] == "FAIL"  # a verdict on the interval bound maps to its metric
    assert status["NIST AI RMF MEASURE 2.10"] == "NO EVIDENCE"
    counts = {c["id"]: c["metrics"] for c in section.data["clauses"]}
    assert counts["NIST AI RMF MEASURE 2.11"] == 2
    # the headline table lists metrics with a direction, not per-group detail
    listed = {(e["clause"], e["metric"]) for e in section.data["headline_evidence"]}
    assert ("NIST AI RMF MEASURE 2.11", "fairness.sex.demographic_parity_difference") in listed
    assert not any("group" in name for _, name in listed)
    assert section.metrics["compliance.clauses_without_evidence"] == len(CLAUSES) - 2
    assert "MEASURE 2.10" in section.warnings[0] and "Art. 15" not in section.warnings[0]
    ungated = compliance_section(metrics, evidence, None)
    assert _verdicts(ungated)["EU AI Act Art. 15"] == "not gated"
    warned = compliance_section(
        metrics, evidence, _rules(["acc", "performance.accuracy", 0.8, ">= 0.9", "warn", "WARN", "", ""])
    )
    assert _verdicts(warned)["EU AI Act Art. 15"] == "WARN"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from audit.cli import main

    out = tmp_path_factory.mktemp("c") / "run"
    assert main(["train", "--sensitive", "sex", "--epochs", "1", "--out", str(out), "-q"]) == 0
    return out


def _clauses(report):
    section = next(s for s in report["sections"] if s["name"] == "compliance")
    return {c["id"]: c for c in section["data"]["clauses"]}, section


def test_a_run_records_evidence_per_clause_and_says_what_has_none(run_dir):
    report = read_report(run_dir)
    clauses, section = _clauses(report)
    assert clauses["NIST AI RMF MEASURE 2.11"]["producers"] == ["fairness"]
    assert clauses["NIST AI RMF MEASURE 2.10"]["producers"] == ["privacy"]  # the MIA audit runs on every run
    assert clauses["NIST AI RMF MEASURE 2.12"]["producers"] == ["efficiency"]
    assert clauses["NIST AI RMF MEASURE 2.7"]["verdict"] == "NO EVIDENCE"  # no --robustness in this run
    assert report["metrics"]["compliance.clauses_without_evidence"] == 1
    html = (run_dir / "report.html").read_text()
    markdown = (run_dir / "report.md").read_text()
    for text in (html, markdown):
        assert "Compliance evidence" in text
        assert "This run produced no evidence for: NIST AI RMF MEASURE 2.7." in text


def test_audit_gate_refreshes_the_verdicts_per_clause(cli, tmp_path, run_dir):
    report_path = tmp_path / "report.json"
    report_path.write_text((run_dir / "report.json").read_text())
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  - {id: acc, metric: performance.accuracy, op: '>=', value: 0.99}\n")
    assert cli("gate", report_path, "--policy", policy, "--write-report").code == 1
    clauses, section = _clauses(json.loads(report_path.read_text()))
    assert clauses["EU AI Act Art. 15"]["verdict"] == "FAIL"
    assert clauses["NIST AI RMF MEASURE 2.11"]["verdict"] == "not gated"
    assert {
        "clause": "EU AI Act Art. 15",
        "metric": "performance.accuracy",
        "value": pytest.approx(read_report(run_dir)["metrics"]["performance.accuracy"]),
        "verdict": "FAIL (acc)",
    } in section["data"]["headline_evidence"]
    policy.write_text(
        "rules:\n  - {id: acc, metric: performance.accuracy, op: '>=', value: 0.5}\n"
        "  - {id: evidence, metric: compliance.clauses_without_evidence, op: '<=', value: 0}\n"
    )
    assert (
        cli("gate", report_path, "--policy", policy, "--write-report").code == 1
    )  # MEASURE 2.7 has no evidence
    clauses, _ = _clauses(json.loads(report_path.read_text()))
    assert clauses["EU AI Act Art. 15"]["verdict"] == "PASS"
    assert cli("verify", report_path).code == 0
    card = (tmp_path / "model_card.md").read_text()
    assert (
        f"| EU AI Act Art. 15 | {clauses['EU AI Act Art. 15']['metrics']} | PASS |" in card
        and "Release gate: **FAIL**" in card
    )


def test_model_card_fills_what_was_measured_and_leaves_judgement_to_a_person(cli, tmp_path, run_dir):
    report = read_report(run_dir)
    card = (run_dir / "model_card.md").read_text()
    m = report["metrics"]
    assert (
        f"| `performance.accuracy` | {m['performance.accuracy']:.4g} "
        f"(95% interval {m['performance.accuracy.ci_low']:.4g} "
        f"to {m['performance.accuracy.ci_high']:.4g}) |"
    ) in card
    assert report["run"]["model_sha256"] in card and report["run"]["data"]["sha256"] in card
    assert "Groups audited: sex" in card and "Trained without differential privacy" in card
    assert card.count("[TO FILL:") >= 5 and "Intended use" in card and "Out-of-scope uses: _[TO FILL" in card
    assert "None" not in card and "`?`" not in card and "?," not in card  # every measured field is filled
    rendered = tmp_path / "card.md"
    assert cli("report", run_dir / "report.json", "--format", "model-card", "--out", rendered).code == 0
    assert rendered.read_text() == card


def test_every_metric_of_a_full_run_is_declared(cli, tmp_path):
    # gates, compliance evidence and the unknown-metric check all rely on the specs covering every name
    out = tmp_path / "full"
    assert cli(
        "train",
        "--sensitive",
        "sex,race",
        "--epochs",
        "1",
        "--dp",
        "--epsilon",
        "3",
        "--dp-baseline",
        "--fairness",
        "reweight",
        "--fairness-baseline",
        "--postprocess",
        "equalized_odds",
        "--fairness-intervals",
        "exact",
        "--robustness",
        "--attack",
        "fgsm,pgd,pgd-l2",
        "--robustness-samples",
        "60",
        "--pgd-steps",
        "2",
        "--mia-samples",
        "300",
        "--compress",
        "quantize,prune",
        "--policy",
        ROOT / "examples" / "release-policy.yaml",
        "--out",
        out,
        "-q",
    ).code in (0, 1)
    metrics = read_report(out)["metrics"]
    assert len(metrics) > 300 and undeclared_metrics(metrics) == []
