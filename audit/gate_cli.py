"""The report-side commands: gate, metrics, diff, verify."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pluggy

from audit.errors import AuditError
from audit.report import Report, content_digest, read_report, write_atomic


def add_subcommands(sub: Any) -> None:
    """Register gate, metrics, diff and verify on the CLI's subparsers."""
    gate = sub.add_parser(
        "gate", help="pass/fail a report against a policy (exit 0 pass, 1 fail, 2 bad input)"
    )
    gate.add_argument("report")
    gate.add_argument("--policy", required=True)
    gate.add_argument("--baseline", help="an older report.json for regression rules")
    gate.add_argument("--junit", help="write JUnit XML here")
    gate.add_argument("--summary", help="write a Markdown summary here (for a pull request)")
    gate.add_argument(
        "--write-report", action="store_true", help="add the gate section to the report and re-render it"
    )
    metrics = sub.add_parser("metrics", help="list every metric name and value of a report")
    metrics.add_argument("report")
    metrics.add_argument("--json", action="store_true", help="print JSON")
    diff = sub.add_parser("diff", help="show what changed between two reports")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--all", action="store_true", help="also list unchanged metrics")
    verify = sub.add_parser("verify", help="check that report.json was not edited since it was written")
    verify.add_argument("report")


def print_gate_table(report: dict[str, Any]) -> None:
    """Print the gate section's verdicts as a terminal table."""
    section = next((s for s in report.get("sections", []) if s["name"] == "gate"), None)
    if section is None:
        return
    rows = section["tables"][0]["rows"]
    print(f"{'rule':<24} {'metric':<52} {'value':>10}  {'threshold':<28} verdict")
    for rule_id, metric, value, threshold, _sev, verdict, detail, _why in rows:
        shown = "missing" if value is None else f"{value:.4g}"
        print(
            f"{rule_id[:24]:<24} {metric[:52]:<52} {shown:>10}  {threshold[:28]:<28} {verdict}{'  (' + detail + ')' if detail else ''}"
        )
    print("gate: PASS" if report["metrics"].get("gate.passed") == 1 else "gate: FAIL")


def _gate(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    from audit.compliance import collect_metric_specs, evidence_from_section, refresh_compliance
    from audit.gate import (
        check_rule_metrics,
        evaluate_policy,
        gate_section,
        junit_xml,
        load_policy,
        markdown_summary,
    )

    data = read_report(args.report)
    rules, digest = load_policy(args.policy)
    check_rule_metrics(
        rules,
        policy_path=args.policy,
        metrics=data["metrics"],
        declared=[s.name for s in collect_metric_specs(pm)],
    )
    baseline = read_report(args.baseline)["metrics"] if args.baseline else None
    result = evaluate_policy(rules, data["metrics"], baseline=baseline)
    result.policy_path, result.policy_sha256 = args.policy, digest
    if args.junit:
        write_atomic(Path(args.junit), junit_xml(result))
    if args.summary:
        write_atomic(Path(args.summary), markdown_summary(result))
    report = Report.from_dict(data)
    report.remove_section("gate")
    report.run["policy_sha256"] = digest
    report.add_section(gate_section(result))
    evidence = evidence_from_section(data)
    if evidence:
        refresh_compliance(report, evidence)
    updated = report.to_dict()
    if args.write_report:
        from audit.render import render_beside

        path = Path(args.report)
        files = render_beside(updated, path)
        write_atomic(path, json.dumps(updated, indent=2))
        for target, text in files.values():
            write_atomic(target, text)
    print_gate_table(updated)
    return 0 if result.passed else 1


def _metrics(args: argparse.Namespace) -> int:
    data = read_report(args.report)
    if args.json:
        print(json.dumps(data["metrics"], indent=2))
        return 0
    width = max((len(k) for k in data["metrics"]), default=10)
    for name, value in data["metrics"].items():
        print(
            f"{name:<{width}}  {'—' if value is None else format(value, '.6g') if isinstance(value, (int, float)) else value}"
        )
    return 0


def _diff(args: argparse.Namespace) -> int:
    old, new = read_report(args.old)["metrics"], read_report(args.new)["metrics"]
    names = list(dict.fromkeys([*old, *new]))
    width = max((len(n) for n in names), default=10)
    print(f"{'metric':<{width}}  {'old':>12}  {'new':>12}  {'change':>12}")
    for name in names:
        a, b = old.get(name), new.get(name)
        if a == b and not args.all:
            continue
        fa = "—" if a is None else f"{a:.6g}"
        fb = "—" if b is None else f"{b:.6g}"
        change = (
            f"{b - a:+.6g}"
            if isinstance(a, (int, float)) and isinstance(b, (int, float))
            else ("added" if a is None and name not in old else "removed" if name not in new else "")
        )
        print(f"{name:<{width}}  {fa:>12}  {fb:>12}  {change:>12}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    data = read_report(args.report)
    recorded = data.get("content_sha256")
    if not recorded:
        raise AuditError(
            f"report {args.report} has no content_sha256; expected a report.json from 'audit train'"
        )
    actual = content_digest(data)
    if actual != recorded:
        print(
            f"MODIFIED: report {args.report} does not match its content_sha256 (recorded {recorded[:16]}…, now {actual[:16]}…)"
        )
        return 1
    print(f"OK: report {args.report} matches its content_sha256 {recorded}")
    return 0


def dispatch(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    """Run one of this module's subcommands."""
    if args.cmd == "gate":
        return _gate(args, pm)
    return {"metrics": _metrics, "diff": _diff, "verify": _verify}[args.cmd](args)
