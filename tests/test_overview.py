"""The overview (the report's first screen as data): verdict, area statuses, warnings, compliance coverage."""

from __future__ import annotations

from audit.compliance import compliance_section, evidence_from_specs
from audit.gate import evaluate_policy, gate_section, parse_rule
from audit.render.overview import FIRST_SCREEN_WARNINGS, overview
from audit.report import MetricSpec, Report, Section

SPECS = [
    MetricSpec("alpha.score", True, "fraction", "", ("Clause A",), headline=True),
    MetricSpec("alpha.extra", True, "fraction", "", ("Clause A",)),
    MetricSpec("beta.gap", False, "fraction", "", ("Clause B",), headline=True),
    MetricSpec("gamma.cost_s", False, "s", "", ("Clause C",), headline=True),
    MetricSpec("delta.count", True, "", "", (), headline=True),
]


def _report(policy: list | None, *, beta_warnings: int = 0) -> dict:
    """Four measuring sections (added out of order); ``policy`` rules gate them when given."""
    report = Report(run={"name": "t"})
    alpha = Section("alpha", "Alpha", order=10, summary=["alpha reads well", "second line"])
    alpha.add_proportion("score", 80, 100)
    alpha.add_metric("extra", 0.5)
    beta = Section("beta", "Beta", order=30, warnings=[f"beta warning {i}" for i in range(beta_warnings)])
    beta.add_metric("gap", 0.2)
    gamma = Section("gamma", "Gamma", order=20)
    gamma.add_metric("cost_s", 1.5)
    delta = Section("delta", "Delta", order=40)  # its only headline metric has no value: no evidence
    delta.add_metric("count", None)
    for section in (beta, delta, gamma, alpha):
        report.add_section(section)
    results = None
    if policy is not None:
        gate = evaluate_policy(
            [parse_rule(r, "policy.yaml", i) for i, r in enumerate(policy)], report.metrics
        )
        report.add_section(gate_section(gate))
        results = report.section("gate").data["results"]
    report.add_section(
        compliance_section(report.metrics, evidence_from_specs(report.metrics, SPECS), results)
    )
    report.mark_headlines(SPECS)
    return report.to_dict()


def _areas(ov: dict) -> dict[str, dict]:
    return {a["name"]: a for a in ov["areas"]}


def test_without_a_policy_nothing_is_gated_and_areas_follow_order():
    ov = overview(_report(None))
    assert ov["verdict"]["status"] == "not gated" and ov["verdict"]["text"].startswith("Not gated")
    assert [a["name"] for a in ov["areas"]] == [
        "alpha",
        "gamma",
        "beta",
        "delta",
    ]  # by order, no gate/compliance
    areas = _areas(ov)
    assert [areas[n]["status"] for n in ("alpha", "gamma", "beta")] == ["not gated"] * 3
    assert areas["delta"]["status"] == "no evidence" and areas["delta"]["figure"] is None


def test_statuses_pass_fail_warn_and_no_evidence_under_a_policy():
    policy = [
        "alpha.score >= 0.7",
        {"id": "gap", "metric": "beta.gap", "op": "<=", "value": 0.1},
        {"id": "soft", "metric": "gamma.cost_s", "op": "<=", "value": 1, "severity": "warn"},
        {"id": "needs-eps", "metric": "epsilon.value", "op": "<=", "value": 3},
    ]
    ov = overview(_report(policy))
    areas = _areas(ov)
    assert areas["alpha"]["status"] == "pass" and areas["alpha"]["reason"] == "1 rule check passed"
    assert areas["beta"]["status"] == "fail" and areas["beta"]["reason"] == "gap failed: 0.2, needs <= 0.1"
    assert areas["gamma"]["status"] == "warn" and "soft" in areas["gamma"]["reason"]
    # a rule on an area the run has no section for: a row of its own, no evidence, the rule named
    assert areas["epsilon"]["status"] == "no evidence"
    assert areas["epsilon"]["reason"] == "needs-eps failed: metric missing from the report, needs <= 3"
    assert areas["epsilon"]["anchor"] is None
    verdict = ov["verdict"]
    assert verdict["status"] == "fail" and verdict["failed"] == ["gap", "needs-eps"]
    assert verdict["text"].startswith("Do not ship") and verdict["warned"] == ["soft"]


def test_a_passing_gate_may_ship_and_section_warnings_still_warn():
    ov = overview(_report(["alpha.score >= 0.7", "beta.gap <= 0.5"], beta_warnings=1))
    assert ov["verdict"]["status"] == "pass" and ov["verdict"]["text"].startswith("May ship")
    areas = _areas(ov)
    assert areas["alpha"]["status"] == "pass"
    assert areas["beta"]["status"] == "warn" and "1 warning" in areas["beta"]["reason"]


def test_the_figure_is_the_gated_headline_with_its_interval_and_the_line_the_summary():
    ov = overview(_report(None))
    alpha = _areas(ov)["alpha"]
    low, high = alpha["figure"]["interval"]
    assert alpha["figure"]["metric"] == "alpha.score" and alpha["figure"]["value"] == 0.8 and low < 0.8 < high
    assert alpha["line"] == "alpha reads well" and alpha["anchor"] == "section-alpha"
    gamma = _areas(ov)["gamma"]  # no summary of its own: its headline metrics, named in words
    assert gamma["line"] == "cost (s) 1.5" and gamma["figure"]["interval"] is None


def test_warnings_are_capped_on_the_first_screen_and_counted():
    report = _report(None, beta_warnings=FIRST_SCREEN_WARNINGS + 2)
    ov = overview(report)
    total = sum(
        len(s["warnings"]) for s in report["sections"]
    )  # compliance warns of clauses without evidence
    assert (
        len(ov["warnings"]) == FIRST_SCREEN_WARNINGS and ov["more_warnings"] == total - FIRST_SCREEN_WARNINGS
    )
    assert ov["warnings"][0] == {
        "section": "beta",
        "title": "Beta",
        "anchor": "section-beta",
        "text": "beta warning 0",
    }


def test_compliance_coverage_comes_from_the_compliance_payload():
    ov = overview(_report(["beta.gap <= 0.1"]))
    coverage = {c["id"]: c for c in ov["compliance"]}
    assert coverage["Clause B"]["verdict"] == "FAIL" and coverage["Clause B"]["metrics"] == 1
    assert coverage["Clause A"]["verdict"] == "not gated"
    assert overview({"metrics": {}, "sections": []})["compliance"] == []
