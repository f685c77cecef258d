"""The compliance section: per regulatory clause, the evidence a run produced and the gate's verdict on it.

Plugins declare which clauses each metric gives evidence for (``MetricSpec.tags``); this module
only joins those tags with the report's metrics and, when there is one, the gate's verdicts.
The section keeps its own (clause, metric) evidence rows, so ``audit gate`` can refresh the
verdicts later from report.json alone, without the plugins that declared the tags.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from audit.report import MetricSpec, Report, Section, Table, interval_base, spec_for

SECTION = "compliance"
SECTION_ORDER = 95  # last: it reads every other section's metrics and the gate's verdicts
NO_EVIDENCE = "NO EVIDENCE"


@dataclass(frozen=True)
class Clause:
    """One clause of a framework that a metric can give evidence for."""

    id: str
    framework: str
    requirement: str


CLAUSES: tuple[Clause, ...] = (
    Clause(
        "EU AI Act Art. 10(2)(f)",
        "EU AI Act",
        "Examination of training, validation and testing data for possible biases that affect health, safety or "
        "fundamental rights, or lead to prohibited discrimination",
    ),
    Clause(
        "EU AI Act Art. 10(5)",
        "EU AI Act",
        "Special categories of personal data processed for bias detection and correction only with appropriate "
        "safeguards, including state-of-the-art privacy-preserving measures",
    ),
    Clause(
        "EU AI Act Art. 15",
        "EU AI Act",
        "An appropriate level of accuracy, robustness and cybersecurity, including resilience against adversarial "
        "examples and model evasion",
    ),
    Clause(
        "NIST AI RMF MEASURE 2.7",
        "NIST AI RMF 1.0",
        "AI system security and resilience are evaluated and documented",
    ),
    Clause(
        "NIST AI RMF MEASURE 2.10",
        "NIST AI RMF 1.0",
        "Privacy risk of the AI system is examined and documented",
    ),
    Clause(
        "NIST AI RMF MEASURE 2.11",
        "NIST AI RMF 1.0",
        "Fairness and bias are evaluated and results are documented",
    ),
    Clause(
        "NIST AI RMF MEASURE 2.12",
        "NIST AI RMF 1.0",
        "Environmental impact and sustainability of model training and management activities are assessed "
        "and documented",
    ),
)


def evidence_from_specs(metrics: dict[str, Any], specs: list[MetricSpec]) -> list[tuple[str, str, str]]:
    """(clause, metric, kind) rows: every point metric of the report under every clause its spec is tagged with."""
    pairs = []
    for name in metrics:
        if interval_base(name) is not None:
            continue
        spec = spec_for(name, specs)
        if spec is None:
            continue
        # Descriptive metrics (no better direction: group sizes, counts) support a headline metric
        # rather than being evidence themselves; they are counted, not listed.
        kind = "headline" if spec.higher_is_better is not None else "detail"
        pairs += [(tag, name, kind) for tag in spec.tags]
    return pairs


def evidence_from_section(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The (clause, metric, kind) rows recorded in the payload of an existing compliance section of a report dict."""
    section = next((s for s in report.get("sections", []) if s["name"] == SECTION), None)
    if section is None:
        return []
    return [(e["clause"], e["metric"], e["kind"]) for e in section.get("data", {}).get("evidence", [])]


def _verdicts_by_metric(gate_results: list[dict[str, Any]] | None) -> dict[str, list[tuple[str, str]]]:
    """(rule id, verdict) per metric a gate rule checked; a verdict on an interval bound counts for its metric."""
    verdicts: dict[str, list[tuple[str, str]]] = {}
    for result in gate_results or []:
        base = interval_base(result["metric"]) or result["metric"]
        verdicts.setdefault(base, []).append((result["rule"], result["verdict"]))
    return verdicts


def _clauses_for(evidence: list[tuple[str, str, str]]) -> list[Clause]:
    known = {c.id for c in CLAUSES}
    declared = [c for c in dict.fromkeys(tag for tag, _, _ in evidence) if c not in known]
    return [
        *CLAUSES,
        *(Clause(tag, "declared by a plugin", "(no requirement text on record)") for tag in declared),
    ]


def compliance_data(
    metrics: dict[str, Any], evidence: list[tuple[str, str, str]], gate_results: list[dict[str, Any]] | None
) -> dict[str, Any]:
    """The section's payload: per clause its evidence, producers and verdict; the headline evidence; the index.

    ``gate_results`` are the gate section's ``data["results"]`` (rule, metric, verdict, ...); without them
    every clause with evidence reads "not gated".
    """
    verdicts = _verdicts_by_metric(gate_results)
    clauses, headline = [], []
    for clause in _clauses_for(evidence):
        names = [name for tag, name, _ in evidence if tag == clause.id and name in metrics]
        shown = [
            name
            for tag, name, kind in evidence
            if tag == clause.id and name in metrics and (kind == "headline" or name in verdicts)
        ]
        clause_verdicts = [v for name in names for _, v in verdicts.get(name, [])]
        clauses.append(
            {
                "id": clause.id,
                "framework": clause.framework,
                "requirement": clause.requirement,
                "metrics": len(names),
                "producers": sorted({n.split(".", 1)[0] for n in names}),
                "checks": len(clause_verdicts),
                "verdict": _clause_verdict(names, clause_verdicts),
            }
        )
        headline += [
            {
                "clause": clause.id,
                "metric": name,
                "value": metrics.get(name),
                "verdict": _metric_verdict(verdicts.get(name, [])),
            }
            for name in shown
        ]
    index = [{"clause": c, "metric": m, "kind": k} for c, m, k in evidence]
    return {"clauses": clauses, "headline_evidence": headline, "evidence": index}


def compliance_section(
    metrics: dict[str, Any],
    evidence: list[tuple[str, str, str]],
    gate_results: list[dict[str, Any]] | None = None,
) -> Section:
    """Build the section from its payload: clauses (status, gate verdict), headline evidence, the index."""
    data = compliance_data(metrics, evidence, gate_results)
    section = Section(SECTION, "Compliance evidence", data=data, order=SECTION_ORDER)
    clause_columns = ["clause", "requirement", "evidence metrics", "produced by", "gate checks", "verdict"]
    section.tables.append(
        Table(
            "Clauses",
            clause_columns,
            [
                [
                    c["id"],
                    c["requirement"],
                    c["metrics"],
                    ", ".join(c["producers"]) or "—",
                    c["checks"],
                    c["verdict"],
                ]
                for c in data["clauses"]
            ],
        )
    )
    section.tables.append(
        Table(
            "Evidence",
            ["clause", "metric", "value", "gate verdict"],
            [[e["clause"], e["metric"], e["value"], e["verdict"]] for e in data["headline_evidence"]],
        )
    )
    section.tables.append(
        Table(
            "Evidence index",
            ["clause", "metric", "kind"],
            [[e["clause"], e["metric"], e["kind"]] for e in data["evidence"]],
        )
    )
    missing = [c["id"] for c in data["clauses"] if c["verdict"] == NO_EVIDENCE]
    section.add_metric("clauses_with_evidence", len(data["clauses"]) - len(missing))
    section.add_metric("clauses_without_evidence", len(missing))
    section.notes.append(
        "Evidence is what this run measured; it supports, and does not replace, a reviewer's assessment of the "
        "clause. Per-group and other descriptive metrics are counted under 'evidence metrics' and listed in the "
        "sections that produced them."
    )
    if missing:
        section.warnings.append("This run produced no evidence for: " + "; ".join(missing) + ".")
    return section


def _clause_verdict(names: list[str], verdicts: list[str]) -> str:
    if not names:
        return NO_EVIDENCE
    if not verdicts:
        return "not gated"
    for word in ("FAIL", "WARN"):
        if word in verdicts:
            return word
    return "PASS"


def _metric_verdict(found: list[tuple[str, str]]) -> str:
    if not found:
        return "not gated"
    return "; ".join(f"{verdict} ({rule_id})" for rule_id, verdict in found)


def refresh_compliance(report: Report, evidence: list[tuple[str, str, str]]) -> None:
    """Replace the report's compliance section, taking verdicts from its gate section's payload when it has one."""
    report.remove_section(SECTION)
    gate = report.section("gate")
    report.add_section(
        compliance_section(report.metrics, evidence, gate.data.get("results") if gate else None)
    )
