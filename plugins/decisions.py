"""``audit decisions``: the fairness audit of decisions another system already made (no model)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from audit import AuditError
from audit.report import Section
from audit_plugins.fairness_sections import BOOTSTRAP, MIN_GROUP_SIZE, fairness_section


def decisions_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``audit decisions``."""
    parser.add_argument("--data", required=True, help="CSV or Parquet of recorded outcomes and decisions")
    parser.add_argument("--y-true", required=True, help="column of true outcomes")
    parser.add_argument("--y-pred", required=True, help="column of the decisions made")
    parser.add_argument("--score", help="column of scores (for ROC AUC)")
    parser.add_argument("--sensitive", required=True, help="comma-separated sensitive columns")
    parser.add_argument(
        "--positive-label", help="the favourable value in y-true and y-pred [1, or the second sorted value]"
    )
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help=f"bootstrap resamples [{BOOTSTRAP}]")
    parser.add_argument(
        "--min-group-size",
        type=int,
        default=MIN_GROUP_SIZE,
        help=f"warn about groups smaller than this [{MIN_GROUP_SIZE}]",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/decisions", help="output folder [runs/decisions]")
    parser.add_argument("--policy", help="gate the report against this policy (exit 1 on failure)")


def _binary(column: pd.Series, positive: str, name: str, path: str) -> np.ndarray:
    if column.isna().any():
        raise AuditError(
            f"column {name!r} in {path} has {int(column.isna().sum())} missing value(s); expected every row filled"
        )
    values = column.astype(str).str.strip()
    if values.nunique() > 2:
        raise AuditError(
            f"column {name!r} in {path} has {values.nunique()} distinct values; expected two (binary decisions)"
        )
    return (values == positive).to_numpy().astype(np.int64)


def run_decisions(args: argparse.Namespace) -> int:
    """Audit decisions another system made: the same fairness section, no model."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from audit.data import check_sensitive, group_frame, read_table, sensitive_bins
    from audit.outputs import write_outputs
    from audit.plugins import get_plugin_manager
    from audit.provenance import package_versions
    from audit.report import Report
    from audit.runner import finalize_report

    if args.bootstrap < 0:
        raise AuditError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    if args.min_group_size < 1:
        raise AuditError(f"--min-group-size must be at least 1, got {args.min_group_size}")
    frame, digest = read_table(args.data)
    sensitive = [c.strip() for c in args.sensitive.split(",") if c.strip()]
    for col in [args.y_true, args.y_pred] + ([args.score] if args.score else []):
        if col not in frame.columns:
            raise AuditError(
                f"{args.data} has no column {col!r}; columns are: {', '.join(map(str, frame.columns))}"
            )
    check_sensitive(frame, sensitive, args.data)
    observed = sorted(set(frame[args.y_true].dropna().astype(str).str.strip()))
    positive = args.positive_label or ("1" if set(observed) <= {"0", "1"} else observed[-1])
    if positive not in observed:
        raise AuditError(
            f"--positive-label {positive!r} is not a value of {args.y_true!r}; expected one of {observed}"
        )
    y_true = _binary(frame[args.y_true], positive, args.y_true, args.data)
    y_pred = _binary(frame[args.y_pred], positive, args.y_pred, args.data)
    groups = group_frame(frame, sensitive, sensitive_bins(frame, sensitive))
    report = Report(
        run={
            "name": Path(args.out).name,
            "command": "decisions",
            "command_line": " ".join(["audit", "decisions", *_argv(args)]),
            "seed": args.seed,
            "device": "none",
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": package_versions(),
            "data": {
                "name": Path(args.data).stem,
                "source": args.data,
                "sha256": digest,
                "rows": len(frame),
                "target": args.y_true,
                "positive_label": positive,
                "sensitive": sensitive,
            },
        }
    )
    perf = Section("performance", "Performance of the recorded decisions")
    perf.add_proportion("accuracy", int((y_true == y_pred).sum()), len(y_true))
    perf.add_metric("balanced_accuracy", float(balanced_accuracy_score(y_true, y_pred)))
    perf.add_metric("selection_rate", float(y_pred.mean()))
    perf.add_metric("test_rows", len(y_true))
    if args.score:
        scores = pd.to_numeric(frame[args.score], errors="coerce")
        if scores.isna().any():
            raise AuditError(f"score column {args.score!r} has missing or non-numeric values")
        perf.add_metric("roc_auc", float(roc_auc_score(y_true, scores)))
    report.add_section(perf)
    section, _ = fairness_section(
        y_true,
        y_pred,
        groups,
        sensitive,
        n_boot=args.bootstrap,
        seed=args.seed,
        min_group_size=args.min_group_size,
    )
    report.add_section(section)
    finalize_report(report, pm=get_plugin_manager(), policy=args.policy)
    data = write_outputs(Path(args.out), report, None)
    for key in ("performance.accuracy", "performance.selection_rate"):
        print(f"  {key:<52} {data['metrics'][key]:.4g}")
    for key in [k for k in data["metrics"] if k.endswith(".demographic_parity_difference")]:
        print(f"  {key:<52} {data['metrics'][key]:.4g}")
    print(f"report: {Path(args.out) / 'report.html'}")
    return 1 if data["metrics"].get("gate.passed") == 0 else 0


def _argv(args: argparse.Namespace) -> list[str]:
    return [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("cmd", "verbose") and v not in (None, False)
    ]
