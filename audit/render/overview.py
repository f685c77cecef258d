"""The report's first screen as data: may this ship, each area's headline figure and status, what to look at.

Computed from a report dict (report.json) alone, so report.html, report.md and the model card lead with the
same overview. The core's own sections (the gate, compliance) are read by name; every other section is an
area, found through its ``headline`` metrics and placed by its ``order``, so a third-party plugin's section
gets a row with no change here.
"""

from __future__ import annotations

import math
from typing import Any

from audit.report import interval_base

GATE, COMPLIANCE = "gate", "compliance"
# An area's status, most serious first; "not gated" only where no policy was given and nothing is wrong.
FAIL, WARN, PASS, NOT_GATED, NO_EVIDENCE = "fail", "warn", "pass", "not gated", "no evidence"
# Warnings beyond this many are counted on the first screen, not listed (each section lists its own).
FIRST_SCREEN_WARNINGS = 4
# Metric-name suffixes that are units (the report's naming convention), shown bracketed in a label.
UNITS = {"s": "s", "ms": "ms", "mb": "MB", "bytes": "bytes", "pct": "%"}


def overview(report: dict[str, Any]) -> dict[str, Any]:
    """The overview of ``report``: the gate's verdict, one row per area, the warnings, compliance coverage."""
    sections = report.get("sections", [])
    gate = next((s for s in sections if s["name"] == GATE), None)
    results = (gate or {}).get("data", {}).get("results", []) if gate else []
    warnings = [
        {"section": s["name"], "title": s["title"], "anchor": anchor(s["name"]), "text": w}
        for s in sections
        for w in s.get("warnings", [])
    ]
    return {
        "verdict": _verdict(gate, report.get("metrics", {})),
        "areas": _areas(sections, report.get("metrics", {}), results),
        "warnings": warnings[:FIRST_SCREEN_WARNINGS],
        "more_warnings": max(0, len(warnings) - FIRST_SCREEN_WARNINGS),
        "compliance": _coverage(sections),
    }


def anchor(section_name: str) -> str:
    """The HTML id of a section (the overview's links point at it)."""
    return f"section-{section_name}"


def _verdict(gate: dict[str, Any] | None, metrics: dict[str, Any]) -> dict[str, Any]:
    """PASS / FAIL with the rule counts when a policy was given; otherwise "not gated"."""
    if gate is None:
        return {
            "status": NOT_GATED,
            "text": "Not gated: no release policy was given, so nothing was checked.",
        }
    data, passed = gate.get("data", {}), metrics.get("gate.passed") == 1
    results = data.get("results", [])
    failed = [r["rule"] for r in results if r.get("verdict") == "FAIL"]
    warned = [r["rule"] for r in results if r.get("verdict") == "WARN"]
    counts = f"{len(results)} rule checks, {len(failed)} failed, {len(warned)} warned"
    if passed:
        text = f"May ship: the release gate passed ({counts})."
    else:
        text = f"Do not ship: the release gate failed ({counts}; failed: {', '.join(dict.fromkeys(failed))})."
    return {
        "status": PASS if passed else FAIL,
        "text": text,
        "policy": data.get("policy"),
        "failed": list(dict.fromkeys(failed)),
        "warned": list(dict.fromkeys(warned)),
    }


def _areas(
    sections: list[dict[str, Any]], metrics: dict[str, Any], results: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """One row per measuring section (by ``order``), then one per area a gate rule names but the run lacks."""
    measuring = [s for s in sections if s["name"] not in (GATE, COMPLIANCE)]
    rows = [_area(s, metrics, _rules_on(results, s["name"])) for s in sorted(measuring, key=_order)]
    present = {s["name"] for s in sections}
    for name in dict.fromkeys(_area_of(r["metric"]) for r in results):
        if name not in present:
            rows.append(_missing_area(name, _rules_on(results, name)))
    return rows


def _order(section: dict[str, Any]) -> int:
    return section.get("order", 50)


def _area_of(metric: str) -> str:
    """The section a metric name (or a gate rule's glob) belongs to: its first segment."""
    return (interval_base(metric) or metric).split(".", 1)[0]


def _rules_on(results: list[dict[str, Any]], area: str) -> list[dict[str, Any]]:
    return [r for r in results if _area_of(r["metric"]) == area]


def _area(section: dict[str, Any], metrics: dict[str, Any], rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A section's row: headline figure and interval, a plain-language line, status and why."""
    shown = [n for n in section.get("headline", []) if _finite(metrics.get(n))]
    gated = {interval_base(r["metric"]) or r["metric"] for r in rules}
    # the figure a reviewer weighs: the headline metric the policy judges, else the section's first
    lead = next((n for n in shown if n in gated), shown[0] if shown else None)
    figure = _figure(lead, metrics) if lead else None
    summary = section.get("summary", [])
    line = summary[0] if summary else "; ".join(_phrase(n, metrics) for n in shown[:3])
    evidence = any(_finite(v) for v in section.get("metrics", {}).values())
    status, reason = _status(evidence, rules, len(section.get("warnings", [])))
    return {
        "name": section["name"],
        "title": section["title"],
        "anchor": anchor(section["name"]),
        "figure": figure,
        "line": line,
        "status": status,
        "reason": reason,
    }


def _missing_area(name: str, rules: list[dict[str, Any]]) -> dict[str, Any]:
    """A row for an area the policy checks but the run produced no section for."""
    _, reason = _status(False, rules, 0)
    return {
        "name": name,
        "title": name.capitalize(),
        "anchor": None,
        "figure": None,
        "line": "This run produced no section for it.",
        "status": NO_EVIDENCE,
        "reason": reason,
    }


def _status(has_evidence: bool, rules: list[dict[str, Any]], warnings: int) -> tuple[str, str]:
    """fail > warn > pass > not gated; no evidence when the area holds no metric with a value."""
    failed = [r for r in rules if r.get("verdict") == "FAIL"]
    warned = [r for r in rules if r.get("verdict") == "WARN"]
    parts = [_check(r, "failed") for r in failed[:2]] + [_check(r, "warned") for r in warned[:2]]
    if len(failed) + len(warned) > len(parts):
        parts.append(f"{len(failed) + len(warned) - len(parts)} more rule checks off")
    if rules and not failed and not warned:
        parts.append(f"{len(rules)} rule check{'s' if len(rules) != 1 else ''} passed")
    if warnings:
        parts.append(f"{warnings} warning{'s' if warnings != 1 else ''}")
    reason = "; ".join(parts)
    if not has_evidence:
        return NO_EVIDENCE, reason
    if failed:
        return FAIL, reason
    if warned or warnings:
        return WARN, reason
    return (PASS if rules else NOT_GATED), reason


def _check(result: dict[str, Any], what: str) -> str:
    """'parity failed: 0.2165, needs <= 0.1' for one gate result (or the result's own detail, no value)."""
    value = result.get("value")
    found = f"{value:.4g}" if _finite(value) else (result.get("detail") or "no value")
    return f"{result['rule']} {what}: {found}, needs {result.get('threshold', '?')}"


def _figure(name: str, metrics: dict[str, Any]) -> dict[str, Any]:
    """A headline metric with its 95% interval (None where it has none)."""
    low, high = metrics.get(f"{name}.ci_low"), metrics.get(f"{name}.ci_high")
    interval = [low, high] if _finite(low) and _finite(high) else None
    return {"metric": name, "label": _label(name), "value": metrics[name], "interval": interval}


def _label(name: str) -> str:
    """A metric's name without its section, words spaced, a unit bracketed: 'x.train_wall_s' -> 'train wall (s)'."""
    words = name.split(".", 1)[-1].replace(".", " ").replace("_", " ").split()
    if words[-2:] == ["per", "s"]:
        return " ".join(words[:-2]) + " per second"
    if len(words) > 1 and words[-1] in UNITS:
        return " ".join(words[:-1]) + f" ({UNITS[words[-1]]})"
    return " ".join(words)


def _phrase(name: str, metrics: dict[str, Any]) -> str:
    """'label value' for an area without a plain-language summary of its own."""
    value = metrics[name]
    text = str(value) if isinstance(value, int) else f"{value:.4g}"
    return f"{_label(name)} {text}"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _coverage(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per clause: its id, how many metrics gave evidence, and the verdict (from the compliance payload)."""
    section = next((s for s in sections if s["name"] == COMPLIANCE), None)
    clauses = (section or {}).get("data", {}).get("clauses", [])
    keys = ("id", "requirement", "metrics", "verdict")
    return [{key: c.get(key, "") for key in keys} for c in clauses]
