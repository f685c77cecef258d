"""The compliance section: per regulatory clause, the evidence a run produced and the gate's verdict on it.

Plugins declare which clauses each metric gives evidence for (``MetricSpec.tags``); this module
only joins those tags with the report's metrics and, when there is one, the gate's verdicts.
The section keeps its own (clause, metric) evidence rows, so ``audit gate`` can refresh the
verdicts later from report.json alone, without the plugins that declared the tags.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pluggy

from audit.report import MetricSpec, Report, Section, Table, interval_base

SECTION = "compliance"


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
        "Environmental impact and sustainability of model training and management activities are assessed and documented",
    ),
)


COMPLIANCE_METRIC_SPECS = [
    MetricSpec(
        "compliance.clauses_with_evidence",
        True,
        "clauses",
        "Catalogued clauses at least one metric of the report speaks to",
    ),
    MetricSpec(
        "compliance.clauses_without_evidence",
        False,
        "clauses",
        "Catalogued clauses no metric of the report speaks to",
    ),
]


def collect_metric_specs(pm: pluggy.PluginManager) -> list[MetricSpec]:
    """The core's metric specs followed by every plugin's (``audit_metric_specs`` results concatenated)."""
    from audit.evaluation import CORE_METRIC_SPECS
    from audit.gate import GATE_METRIC_SPECS

    return [
        *CORE_METRIC_SPECS,
        *COMPLIANCE_METRIC_SPECS,
        *GATE_METRIC_SPECS,
        *(spec for group in pm.hook.audit_metric_specs() for spec in (group or [])),
    ]


def spec_for(name: str, specs: Iterable[MetricSpec]) -> MetricSpec | None:
    """The spec declaring ``name``: an exact name wins over a glob; among globs, the longest pattern."""
    specs = list(specs)
    exact = next((s for s in specs if s.name == name), None)
    if exact is not None:
        return exact
    globs = [s for s in specs if fnmatch.fnmatchcase(name, s.name)]
    return max(globs, key=lambda s: len(s.name), default=None)


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
    """The (clause, metric, kind) rows recorded in an existing compliance section of a report dict."""
    section = next((s for s in report.get("sections", []) if s["name"] == SECTION), None)
    if section is None:
        return []
    table = next(t for t in section["tables"] if t["title"] == "Evidence index")
    return [(row[0], row[1], row[2]) for row in table["rows"]]


def compliance_section(
    metrics: dict[str, Any], evidence: list[tuple[str, str, str]], gate_table: Table | None = None
) -> Section:
    """Build the section: a clause table (status and gate verdict), the headline evidence, and the index.

    ``gate_table`` is the gate section's "Rules" table (columns rule, metric, ..., verdict); without
    it every clause reads "not gated".
    """
    verdicts: dict[str, list[tuple[str, str]]] = {}
    if gate_table is not None:
        col = {name: i for i, name in enumerate(gate_table.columns)}
        for row in gate_table.rows:
            metric = row[col["metric"]]
            base = interval_base(metric) or metric
            verdicts.setdefault(base, []).append((row[col["rule"]], row[col["verdict"]]))
    known = {c.id for c in CLAUSES}
    declared = [c for c in dict.fromkeys(tag for tag, _, _ in evidence) if c not in known]
    clauses = [
        *CLAUSES,
        *(Clause(tag, "declared by a plugin", "(no requirement text on record)") for tag in declared),
    ]
    section = Section(SECTION, "Compliance evidence")
    clause_rows, headline_rows, missing = [], [], []
    for clause in clauses:
        names = [name for tag, name, _ in evidence if tag == clause.id and name in metrics]
        headline = [
            name
            for tag, name, kind in evidence
            if tag == clause.id and name in metrics and (kind == "headline" or name in verdicts)
        ]
        clause_verdicts = [v for name in names for _, v in verdicts.get(name, [])]
        status = _clause_verdict(names, clause_verdicts)
        if not names:
            missing.append(clause.id)
        sources = sorted({name.split(".", 1)[0] for name in names})
        clause_rows.append(
            [
                clause.id,
                clause.requirement,
                len(names),
                ", ".join(sources) or "—",
                len(clause_verdicts),
                status,
            ]
        )
        headline_rows += [
            [clause.id, name, metrics.get(name), _metric_verdict(verdicts.get(name, []))] for name in headline
        ]
    section.tables.append(
        Table(
            "Clauses",
            ["clause", "requirement", "evidence metrics", "produced by", "gate checks", "verdict"],
            clause_rows,
        )
    )
    section.tables.append(Table("Evidence", ["clause", "metric", "value", "gate verdict"], headline_rows))
    section.tables.append(Table("Evidence index", ["clause", "metric", "kind"], [list(e) for e in evidence]))
    section.add_metric("clauses_with_evidence", len(clauses) - len(missing))
    section.add_metric("clauses_without_evidence", len(missing))
    section.notes.append(
        "Evidence is what this run measured; it supports, and does not replace, a reviewer's "
        "assessment of the clause. Per-group and other descriptive metrics are counted under "
        "'evidence metrics' and listed in the sections that produced them."
    )
    if missing:
        section.warnings.append("This run produced no evidence for: " + "; ".join(missing) + ".")
    return section


def _clause_verdict(names: list[str], verdicts: list[str]) -> str:
    if not names:
        return "NO EVIDENCE"
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
    """Replace the report's compliance section, taking verdicts from its gate section when it has one."""
    report.remove_section(SECTION)
    gate = report.section("gate")
    rules = next((t for t in gate.tables if t.title == "Rules"), None) if gate is not None else None
    report.add_section(compliance_section(report.metrics, evidence, rules))
