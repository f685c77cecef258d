"""Policy evaluation over the report's flat metrics map. Fails closed: a missing metric is a failure."""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
import operator
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import yaml

from audit.errors import AuditError
from audit.report import MetricSpec, Report, Section, Table, interval_base

OPERATORS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt, "==": operator.eq}
BOUNDS = {"point": "", "lower": ".ci_low", "upper": ".ci_high"}
SEVERITIES = ("error", "warn")
_SHORTHAND = re.compile(r"^\s*(?P<metric>\S+)\s*(?P<op><=|>=|==|<|>)\s*(?P<value>\S+)\s*$")
SECTION_ORDER = 90  # after every measuring section, before compliance (which reads its verdicts)
# payload key -> table column
RESULT_COLUMNS = {
    "rule": "rule",
    "metric": "metric",
    "value": "value",
    "threshold": "threshold",
    "severity": "severity",
    "verdict": "verdict",
    "detail": "detail",
    "rationale": "rationale",
}
_RULE_KEYS = {"id", "metric", "op", "value", "bound", "severity", "rationale", "max_drop", "max_increase"}


@dataclass(frozen=True)
class Rule:
    """One policy rule: a threshold on a metric (or glob), or a bounded regression against a baseline."""

    id: str
    metric: str
    op: str | None = None
    value: float | None = None
    bound: str = "point"
    severity: str = "error"
    rationale: str = ""
    max_drop: float | None = None
    max_increase: float | None = None

    @property
    def is_regression(self) -> bool:
        """True for a rule that compares against a baseline report."""
        return self.max_drop is not None or self.max_increase is not None

    def describe(self) -> str:
        """The rule as one readable expression."""
        if self.max_drop is not None:
            return f"drop <= {self.max_drop:g} vs baseline"
        if self.max_increase is not None:
            return f"rise <= {self.max_increase:g} vs baseline"
        where = "" if self.bound == "point" else f" ({self.bound} 95% bound)"
        return f"{self.op} {self.value:g}{where}"


@dataclass
class RuleResult:
    """The verdict of one rule on one metric name."""

    rule: Rule
    metric: str
    value: float | None
    verdict: str  # "pass", "fail" or "warn"
    detail: str = ""


@dataclass
class GateResult:
    """All verdicts; passed when no error-severity rule failed."""

    results: list[RuleResult] = field(default_factory=list)
    policy_path: str = ""
    policy_sha256: str = ""

    @property
    def passed(self) -> bool:
        """True when no error-severity rule failed."""
        return not any(r.verdict == "fail" for r in self.results)


def _rule_lines(text: str) -> list[int]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return []
    if isinstance(root, yaml.MappingNode):
        for key, value in root.value:
            if key.value == "rules" and isinstance(value, yaml.SequenceNode):
                return [item.start_mark.line + 1 for item in value.value]
    if isinstance(root, yaml.SequenceNode):
        return [item.start_mark.line + 1 for item in root.value]
    return []


def _number(raw: Any, where: str, key: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        try:
            return float(str(raw))
        except ValueError:
            raise AuditError(f"{where}: {key} must be a number, got {raw!r}") from None
    return float(raw)


def parse_rule(raw: Any, where: str, index: int) -> Rule:
    """Parse one rule from its YAML form (a mapping or a 'metric op value' string)."""
    if isinstance(raw, str):
        match = _SHORTHAND.match(raw)
        if not match:
            raise AuditError(f"{where}: cannot read rule {raw!r}; expected 'metric <= value' or a mapping")
        raw = {"metric": match["metric"], "op": match["op"], "value": match["value"]}
    if not isinstance(raw, dict):
        raise AuditError(f"{where}: a rule must be a mapping or a string, got {type(raw).__name__}")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise AuditError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; expected {', '.join(sorted(_RULE_KEYS))}"
        )
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        raise AuditError(f"{where}: 'metric' is required (a metric name or glob pattern)")
    severity = raw.get("severity", "error")
    if severity not in SEVERITIES:
        raise AuditError(f"{where}: severity {severity!r} is unknown; expected error or warn")
    bound = raw.get("bound", "point")
    if bound not in BOUNDS:
        raise AuditError(f"{where}: bound {bound!r} is unknown; expected point, lower or upper")
    common = dict(
        id=str(raw.get("id") or f"rule-{index + 1}"),
        metric=metric,
        severity=severity,
        rationale=str(raw.get("rationale", "")),
        bound=bound,
    )
    if "max_drop" in raw or "max_increase" in raw:
        if "op" in raw or "value" in raw:
            raise AuditError(f"{where}: a rule has either op/value or max_drop/max_increase, not both")
        key = "max_drop" if "max_drop" in raw else "max_increase"
        return Rule(**common, **{key: _number(raw[key], where, key)})
    op = raw.get("op")
    if op not in OPERATORS:
        raise AuditError(f"{where}: op {op!r} is unknown; expected one of {', '.join(OPERATORS)}")
    if "value" not in raw:
        raise AuditError(f"{where}: 'value' (the threshold) is required")
    return Rule(**common, op=op, value=_number(raw["value"], where, "value"))


def load_policy(path: str) -> tuple[list[Rule], str]:
    """Read a policy file; return its rules and its SHA-256. Malformed input names the line."""
    file = Path(path)
    if not file.is_file():
        raise AuditError(f"policy {path} does not exist")
    text = file.read_text()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise AuditError(
            f"policy {path}{f', line {mark.line + 1}' if mark else ''}: not valid YAML ({getattr(exc, 'problem', exc)})"
        ) from None
    rules_raw = data.get("rules") if isinstance(data, dict) else data
    if not isinstance(rules_raw, list) or not rules_raw:
        raise AuditError(f"policy {path}: expected a non-empty list under 'rules'")
    lines = _rule_lines(text)
    rules = [
        parse_rule(raw, f"policy {path}, line {lines[i] if i < len(lines) else '?'} (rule {i + 1})", i)
        for i, raw in enumerate(rules_raw)
    ]
    ids = [r.id for r in rules]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise AuditError(f"policy {path}: rule id(s) {', '.join(duplicated)} are used twice")
    return rules, hashlib.sha256(text.encode()).hexdigest()


def globs_overlap(a: str, b: str) -> bool:
    """Whether some name matches both glob patterns (``*`` any run, ``?`` one character, the rest literal)."""

    @functools.cache
    def meet(i: int, j: int) -> bool:
        if i == len(a) or j == len(b):
            return a[i:].strip("*") == "" and b[j:].strip("*") == ""
        if a[i] == "*":
            return meet(i + 1, j) or meet(i, j + 1)
        if b[j] == "*":
            return meet(i, j + 1) or meet(i + 1, j)
        return (a[i] == b[j] or "?" in (a[i], b[j])) and meet(i + 1, j + 1)

    return meet(0, 0)


def renamed_metric(name: str, specs: list[MetricSpec]) -> str | None:
    """The current name of a metric (or glob) that a spec lists under ``former_names``; None when none does."""
    for spec in specs:
        for former in spec.former_names:
            # each * of a former name is one dotted segment, carried into the same * of the current name
            pattern = "^" + re.escape(former).replace(r"\*", "([^.]+)") + "$"
            match = re.match(pattern, name)
            if match:
                pieces = spec.name.split("*")
                return pieces[0] + "".join(
                    seg + rest for seg, rest in zip(match.groups(), pieces[1:], strict=True)
                )
    return None


def check_rule_metrics(
    rules: list[Rule], *, policy_path: str, metrics: dict[str, Any], specs: list[MetricSpec]
) -> None:
    """Refuse a rule whose metric (or glob) matches nothing in the report and nothing any installed plugin declares.

    Such a name is a typo, a renamed metric or a plugin missing here, not a metric this run happened not to
    produce (that one fails closed as usual), so it is bad input: one line, exit code 2, with the new name of
    a renamed metric or the nearest known names.
    """
    import difflib

    declared = [s.name for s in specs]
    for rule in rules:
        name = interval_base(rule.metric) or rule.metric
        if any(n in metrics for n in matching_metrics(name, metrics)):
            continue
        if any(globs_overlap(name, pattern) for pattern in declared):
            continue
        where = f"policy {policy_path}, rule {rule.id}: metric {rule.metric!r}"
        current = renamed_metric(name, specs)
        if current is not None:
            suffix = rule.metric[len(name) :]
            raise AuditError(
                f"{where} was renamed to {current + suffix!r} (see CHANGELOG.md); update the policy"
            )
        known = dict.fromkeys(
            [*(m for m in metrics if interval_base(m) is None), *(p for p in declared if "*" not in p)]
        )
        near = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
        hint = f"; nearest: {', '.join(near)}" if near else ""
        raise AuditError(
            f"{where} is unknown: no metric of the report matches it and no installed plugin declares it; "
            f"expected a name from 'audit metrics REPORT'{hint}"
        )


def matching_metrics(pattern: str, metrics: dict[str, Any]) -> list[str]:
    """Metric names a rule applies to: the exact name, or every match of a glob (interval bounds excluded)."""
    if not any(ch in pattern for ch in "*?["):
        return [pattern]
    return sorted(n for n in metrics if fnmatch.fnmatchcase(n, pattern) and interval_base(n) is None)


def _finite(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def evaluate_policy(
    rules: list[Rule], metrics: dict[str, Any], *, baseline: dict[str, Any] | None = None
) -> GateResult:
    """Apply every rule to the metrics map; any missing value is a failure (fail closed)."""
    if baseline is None and any(r.is_regression for r in rules):
        names = ", ".join(r.id for r in rules if r.is_regression)
        raise AuditError(f"rule(s) {names} compare against a baseline; pass --baseline OLD_REPORT")
    result = GateResult()
    for rule in rules:
        names = matching_metrics(rule.metric, metrics)
        if not names:
            result.results.append(
                RuleResult(rule, rule.metric, None, _verdict(rule, False), "no metric matches this pattern")
            )
            continue
        for name in names:
            result.results.append(_apply(rule, name, metrics, baseline))
    return result


def _verdict(rule: Rule, ok: bool) -> str:
    return "pass" if ok else ("fail" if rule.severity == "error" else "warn")


def _apply(rule: Rule, name: str, metrics: dict[str, Any], baseline: dict[str, Any] | None) -> RuleResult:
    key = name + BOUNDS[rule.bound]
    value = _finite(metrics.get(key))
    if value is None:
        return RuleResult(
            rule,
            key,
            None,
            _verdict(rule, False),
            "metric missing from the report" if key not in metrics else "metric has no finite value",
        )
    if rule.is_regression:
        old = _finite((baseline or {}).get(key))
        if old is None:
            return RuleResult(rule, key, value, _verdict(rule, False), "metric missing from the baseline")
        change = old - value if rule.max_drop is not None else value - old
        limit = rule.max_drop if rule.max_drop is not None else rule.max_increase
        return RuleResult(
            rule,
            key,
            value,
            _verdict(rule, change <= limit + 1e-12),
            f"baseline {old:.6g}, change {change:+.6g}",
        )
    return RuleResult(rule, key, value, _verdict(rule, OPERATORS[rule.op](value, rule.value)))


def gate_data(result: GateResult) -> dict[str, Any]:
    """The gate section's payload: the policy, the verdict, and one result per (rule, metric)."""
    return {
        "policy": result.policy_path,
        "policy_sha256": result.policy_sha256,
        "passed": result.passed,
        "results": [
            {
                "rule": r.rule.id,
                "metric": r.metric,
                "value": r.value,
                "threshold": r.rule.describe(),
                "severity": r.rule.severity,
                "verdict": r.verdict.upper(),
                "detail": r.detail,
                "rationale": r.rule.rationale,
            }
            for r in result.results
        ],
    }


def gate_section(result: GateResult) -> Section:
    """The ``gate`` report section: the verdicts' payload, its table, and pass/fail counts as metrics."""
    data = gate_data(result)
    section = Section("gate", "Release gate", data=data, order=SECTION_ORDER)
    section.add_metric("passed", 1 if result.passed else 0)
    section.add_metric("rules_checked", len(result.results))
    section.add_metric("rules_failed", sum(r.verdict == "fail" for r in result.results))
    section.add_metric("rules_warned", sum(r.verdict == "warn" for r in result.results))
    section.tables.append(
        Table(
            "Rules",
            list(RESULT_COLUMNS.values()),
            [[row[key] for key in RESULT_COLUMNS] for row in data["results"]],
        )
    )
    section.notes.append(
        f"policy {result.policy_path} (SHA-256 {result.policy_sha256}); gates fail closed: a missing metric fails"
    )
    return section


def gate_report_in_place(
    report: Report, *, policy_path: str, specs: list[MetricSpec], baseline: dict[str, Any] | None = None
) -> GateResult:
    """Evaluate a policy on a report being built and add the gate section to it (``specs``: the declared metrics)."""
    rules, digest = load_policy(policy_path)
    check_rule_metrics(rules, policy_path=policy_path, metrics=report.metrics, specs=specs)
    result = evaluate_policy(rules, report.metrics, baseline=baseline)
    result.policy_path, result.policy_sha256 = policy_path, digest
    report.run["policy_sha256"] = digest
    report.add_section(gate_section(result))
    return result


def junit_xml(result: GateResult) -> str:
    """JUnit XML with one test case per (rule, metric) verdict; warnings are passing cases with output."""
    failures = sum(r.verdict == "fail" for r in result.results)
    cases = []
    for r in result.results:
        name = escape(f"{r.rule.id}: {r.metric} {r.rule.describe()}", {'"': "&quot;"})
        body = ""
        message = escape(f"value {r.value} {r.rule.describe()} {r.detail}".strip(), {'"': "&quot;"})
        if r.verdict == "fail":
            body = f'<failure message="{message}" type="{escape(r.rule.severity)}"/>'
        elif r.verdict == "warn":
            body = f"<system-out>WARN: {message}</system-out>"
        cases.append(f'  <testcase classname="audit.gate" name="{name}">{body}</testcase>')
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<testsuite name="audit gate" tests="{len(result.results)}" failures="{failures}" errors="0">\n'
        + "\n".join(cases)
        + "\n</testsuite>\n"
    )


def markdown_summary(result: GateResult) -> str:
    """A short Markdown summary for a pull request."""
    head = "✅ **Release gate passed**" if result.passed else "❌ **Release gate failed**"
    lines = [head, "", "| rule | metric | value | threshold | verdict |", "|---|---|---|---|---|"]
    for r in result.results:
        value = "—" if r.value is None else f"{r.value:.4g}"
        lines.append(f"| {r.rule.id} | `{r.metric}` | {value} | {r.rule.describe()} | {r.verdict.upper()} |")
    return "\n".join(lines) + "\n"
