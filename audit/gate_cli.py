"""The report-side commands: gate, metrics, diff, verify, keygen."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pluggy

from audit.cli_output import MODEL_FILE, finish_command, set_files, written_line
from audit.errors import AuditError
from audit.outputs import check_writable, write_atomic, write_report_set
from audit.report import Report, read_report
from audit.signing import (
    CHECKSUM_ONLY,
    Verification,
    add_sign_key_argument,
    generate_keys,
    load_public_key,
    resolve_sign_key,
    verify_report,
)
from audit.tracking import add_mlflow_argument, open_tracking


def add_subcommands(sub: Any) -> None:
    """Register gate, metrics, diff, verify and keygen on the CLI's subparsers."""
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
    gate.add_argument("--public-key", metavar="FILE", help="refuse the report unless this key signed it")
    add_sign_key_argument(gate)
    add_mlflow_argument(gate)
    metrics = sub.add_parser("metrics", help="list every metric name and value of a report")
    metrics.add_argument("report")
    metrics.add_argument("--json", action="store_true", help="print JSON")
    diff = sub.add_parser("diff", help="show what changed between two reports")
    diff.add_argument("old")
    diff.add_argument("new")
    diff.add_argument("--all", action="store_true", help="also list unchanged metrics")
    verify = sub.add_parser(
        "verify", help="check report.json, the files it lists and its signature (exit 0 OK, 1 modified)"
    )
    verify.add_argument("report")
    verify.add_argument("--public-key", metavar="FILE", help="also check that this key signed the report")
    keygen = sub.add_parser("keygen", help="write an Ed25519 key pair for --sign-key and --public-key")
    keygen.add_argument(
        "--out", required=True, metavar="DIR", help="folder for the key pair (never overwritten)"
    )


def print_gate_table(report: dict[str, Any]) -> None:
    """Print the gate section's verdicts (from its payload) as a terminal table."""
    section = next((s for s in report.get("sections", []) if s["name"] == "gate"), None)
    if section is None:
        return
    print(f"{'rule':<24} {'metric':<52} {'value':>10}  {'threshold':<28} verdict")
    for r in section["data"]["results"]:
        shown = "missing" if r["value"] is None else f"{r['value']:.4g}"
        detail = f"  ({r['detail']})" if r["detail"] else ""
        print(
            f"{r['rule'][:24]:<24} {r['metric'][:52]:<52} {shown:>10}  {r['threshold'][:28]:<28} {r['verdict']}{detail}"
        )
    print("gate: PASS" if section["data"]["passed"] else "gate: FAIL")


def _verified_for_gate(args: argparse.Namespace) -> tuple[dict[str, Any], Verification, Any]:
    """Read and verify the report (and baseline) before gating; load the key that signs a rewritten report."""
    data = read_report(args.report)
    public = load_public_key(args.public_key) if args.public_key else None
    found = verify_report(Path(args.report), data, public_key=public, strict_files=False)
    if found.problems:
        raise AuditError(f"report {args.report} fails verification, not gated: {'; '.join(found.problems)}")
    if args.baseline:
        old = verify_report(Path(args.baseline), read_report(args.baseline), strict_files=False)
        if old.problems:
            raise AuditError(f"baseline {args.baseline} fails verification: {'; '.join(old.problems)}")
    sign_key = resolve_sign_key(args.sign_key) if args.write_report else None
    if sign_key is None and args.write_report and "signature" in data:
        raise AuditError(
            f"report {args.report} is signed; --write-report needs --sign-key (or $AUDIT_SIGN_KEY) to sign it again"
        )
    return data, found, sign_key


def _gate(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    from audit.compliance import evidence_from_section, refresh_compliance
    from audit.gate import (
        check_rule_metrics,
        evaluate_policy,
        gate_section,
        junit_xml,
        load_policy,
        markdown_summary,
    )
    from audit.plugins import collect_metric_specs

    for option, value in (("--junit", args.junit), ("--summary", args.summary)):
        if value:
            check_writable(Path(value), folder=False, what=option)
    tracking = open_tracking(args.mlflow)
    data, found, sign_key = _verified_for_gate(args)
    rules, digest = load_policy(args.policy)
    check_rule_metrics(
        rules, policy_path=args.policy, metrics=data["metrics"], specs=collect_metric_specs(pm)
    )
    baseline = read_report(args.baseline)["metrics"] if args.baseline else None
    result = evaluate_policy(rules, data["metrics"], baseline=baseline)
    result.policy_path, result.policy_sha256 = args.policy, digest
    written = [Path(p) for p in (args.junit, args.summary) if p]
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
        # the files this write keeps (model.pt) stay in the manifest, as verified just now
        kept = {name: data["manifest"][name] for name in found.files}
        updated = write_report_set(Path(args.report), updated, sign_key=sign_key, carried=kept)
        written = (
            set_files(Path(args.report), updated, skip=[MODEL_FILE]) + written
        )  # the model is kept, not written
    if not args.quiet:
        print_gate_table(updated)
    _finish_gate(args, updated if args.write_report else data, updated, written, tracking)
    return 0 if result.passed else 1


def _finish_gate(
    args: argparse.Namespace,
    on_disk: dict[str, Any],
    updated: dict[str, Any],
    written: list[Path],
    tracking: Any,
) -> None:
    """Name the files the gate wrote; with --mlflow, log the gated report, the files beside it and the gate's own."""
    beside = [p for p in set_files(Path(args.report), on_disk) if p.is_file()]
    finish_command(
        written,
        report=updated,
        command="gate",
        tracking=tracking,
        quiet=args.quiet,
        artifacts=list(dict.fromkeys(beside + written)),
    )


def _metrics(args: argparse.Namespace) -> int:
    data = read_report(args.report)
    if args.json:
        print(json.dumps(data["metrics"], indent=2))
        return 0
    width = max((len(k) for k in data["metrics"]), default=10)
    for name, value in data["metrics"].items():
        print(
            f"{name:<{width}}  "
            f"{'—' if value is None else format(value, '.6g') if isinstance(value, (int, float)) else value}"
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
    public = load_public_key(args.public_key) if args.public_key else None
    found = verify_report(Path(args.report), data, public_key=public)
    if found.problems:
        verdict = "MODIFIED" if found.modified else "NOT VERIFIED"
        print(f"{verdict}: report {args.report}: {'; '.join(found.problems)}")
        return 1
    covered = f"matches its content_sha256 {data['content_sha256']}"
    if found.has_manifest:
        covered += f" and the {len(found.files)} files it lists ({', '.join(found.files)})"
    else:
        covered += " (an older report: it lists no files, so only report.json is checked)"
    if args.quiet:
        return 0
    if found.key_id is None:
        print(f"OK (checksum only): report {args.report} {covered}; {CHECKSUM_ONLY}")
    elif public is None:
        print(
            f"OK: report {args.report} {covered}; "
            f"signature valid for key {found.key_id}; pass --public-key to check who signed"
        )
    else:
        print(
            f"OK: report {args.report} {covered}; signed by key {found.key_id}, the key in {args.public_key}"
        )
    return 0


def _keygen(args: argparse.Namespace) -> int:
    private, public, kid = generate_keys(args.out)
    if args.quiet:
        return 0
    print(written_line([Path(private), Path(public)]))
    print(f"private key: {private} (mode 0600; keep it secret: it signs reports, --sign-key)")
    print(f"public key:  {public} (for whoever checks: audit verify REPORT --public-key {public})")
    print(f"key id:      {kid}")
    return 0


def dispatch(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    """Run one of this module's subcommands."""
    if args.cmd == "gate":
        return _gate(args, pm)
    return {"metrics": _metrics, "diff": _diff, "verify": _verify, "keygen": _keygen}[args.cmd](args)
