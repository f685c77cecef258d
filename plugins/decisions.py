"""``audit decisions``: the fairness audit of decisions another system already made (no model)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pluggy
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from audit import AuditError
from audit.cli_output import finish_command, set_files
from audit.config import list_type
from audit.data import check_sensitive, group_frame, read_table, sensitive_bins
from audit.outputs import check_writable, write_outputs
from audit.provenance import package_versions
from audit.report import Report, Section
from audit.runner import finalize_report
from audit.signing import add_sign_key_argument, resolve_sign_key
from audit.tracking import add_mlflow_argument, open_tracking
from audit_plugins.fairness_metrics import INTERVAL_METHODS
from audit_plugins.fairness_sections import (
    INTERVALS,
    MIN_GROUP_SIZE,
    fairness_data,
    fairness_section,
    summary_metric,
)

PERFORMANCE_ORDER = 10  # before the fairness section, as in a training run's report


def decisions_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``audit decisions``."""
    parser.add_argument("--data", required=True, help="CSV or Parquet of recorded outcomes and decisions")
    parser.add_argument("--y-true", required=True, help="column of true outcomes")
    parser.add_argument("--y-pred", required=True, help="column of the decisions made")
    parser.add_argument("--score", help="column of scores (for ROC AUC)")
    parser.add_argument(
        "--sensitive",
        required=True,
        type=list_type(what="column names"),
        help="comma-separated sensitive columns",
    )
    parser.add_argument(
        "--positive-label", help="the favourable value in y-true and y-pred [1, or the second sorted value]"
    )
    parser.add_argument(
        "--intervals",
        choices=list(INTERVAL_METHODS),
        default=INTERVALS,
        help="95%% intervals: 'exact' (Clopper-Pearson per group rate, simultaneous for gaps) or 'none' "
        f"[{INTERVALS}]",
    )
    # Removed (issue 13); still parsed so that it is refused naming its replacement, not as an unknown flag.
    parser.add_argument("--bootstrap", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--min-group-size",
        type=int,
        default=MIN_GROUP_SIZE,
        help=f"warn about groups smaller than this [{MIN_GROUP_SIZE}]",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/decisions", help="output folder [runs/decisions]")
    add_sign_key_argument(parser)
    add_mlflow_argument(parser)
    parser.add_argument("--policy", help="gate the report against this policy (exit 1 on failure)")


def run_decisions(args: argparse.Namespace, pm: pluggy.PluginManager) -> int:
    """Audit decisions another system made: the same fairness section as a training run's, no model."""
    _check_numbers(args)
    check_writable(Path(args.out), folder=True, what="--out")
    resolve_sign_key(args.sign_key)  # an unreadable key is refused before any work
    tracking = open_tracking(args.mlflow)  # so is a bad --mlflow
    frame, digest = read_table(args.data)
    _check_columns(frame, args)
    positive = _positive_label(frame, args)
    y_true = _binary(frame[args.y_true], positive, args.y_true, args.data)
    y_pred = _binary(frame[args.y_pred], positive, args.y_pred, args.data)
    groups = group_frame(frame, args.sensitive, sensitive_bins(frame, args.sensitive))
    report = Report(run=_run_info(args, frame, digest, positive))
    report.add_section(_performance_section(frame, args, y_true, y_pred))
    fairness = fairness_section(
        fairness_data(
            y_true,
            y_pred,
            groups,
            args.sensitive,
            intervals=args.intervals,
            min_group_size=args.min_group_size,
            classes=(_negative_label(frame, args, positive), positive),
            by="decisions",
        )
    )
    report.add_section(fairness)
    finalize_report(report, pm=pm, policy=args.policy)
    data = write_outputs(Path(args.out), report, None, sign_key=resolve_sign_key(args.sign_key))
    parity = [
        f"fairness.{summary_metric(feature, 'demographic_parity_difference')}"
        for feature, entry in fairness.data["features"].items()
        if "demographic_parity_difference" in entry["summaries"]
    ]
    for key in [] if args.quiet else ["performance.accuracy", "performance.selection_rate", *parity]:
        print(f"  {key:<52} {data['metrics'][key]:.4g}")
    files = set_files(Path(args.out) / "report.json", data)
    finish_command(files, report=data, command="decisions", tracking=tracking, quiet=args.quiet)
    return 1 if data["metrics"].get("gate.passed") == 0 else 0


def _check_numbers(args: argparse.Namespace) -> None:
    if args.bootstrap is not None:
        raise AuditError(
            "--bootstrap was removed: fairness intervals are exact now (Clopper-Pearson per group, simultaneous "
            "for gaps, valid at no gap); use --intervals exact|none"
        )
    if args.min_group_size < 1:
        raise AuditError(f"--min-group-size must be at least 1, got {args.min_group_size}")
    if not 0 <= args.seed <= 2**32 - 1:
        raise AuditError(f"--seed must be in [0, {2**32 - 1}], got {args.seed}")
    if not args.sensitive:
        raise AuditError(
            "--sensitive names no column; expected the comma-separated sensitive columns to audit"
        )


def _check_columns(frame: pd.DataFrame, args: argparse.Namespace) -> None:
    for column in [args.y_true, args.y_pred] + ([args.score] if args.score else []):
        if column not in frame.columns:
            raise AuditError(
                f"{args.data} has no column {column!r}; columns are: {', '.join(map(str, frame.columns))}"
            )
    check_sensitive(frame, args.sensitive, args.data, target=args.y_true)


def _positive_label(frame: pd.DataFrame, args: argparse.Namespace) -> str:
    """The favourable value: as given, else 1 for 0/1 outcomes, else the last of the sorted values."""
    observed = sorted(set(frame[args.y_true].dropna().astype(str).str.strip()))
    positive = args.positive_label or ("1" if set(observed) <= {"0", "1"} else observed[-1])
    if positive not in observed:
        raise AuditError(
            f"--positive-label {positive!r} is not a value of {args.y_true!r}; expected one of {observed}"
        )
    return positive


def _negative_label(frame: pd.DataFrame, args: argparse.Namespace, positive: str) -> str:
    """The other decision's name: the first value of y-true or y-pred that is not the positive one."""
    values = pd.concat([frame[args.y_true], frame[args.y_pred]]).dropna().astype(str).str.strip()
    others = sorted(set(values) - {positive})
    return others[0] if others else f"not {positive}"


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


def _run_info(args: argparse.Namespace, frame: pd.DataFrame, digest: str, positive: str) -> dict[str, Any]:
    return {
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
            "sensitive": args.sensitive,
        },
    }


def _performance_section(
    frame: pd.DataFrame, args: argparse.Namespace, y_true: np.ndarray, y_pred: np.ndarray
) -> Section:
    section = Section("performance", "Performance of the recorded decisions", order=PERFORMANCE_ORDER)
    section.add_proportion("accuracy", int((y_true == y_pred).sum()), len(y_true))
    section.add_metric("balanced_accuracy", float(balanced_accuracy_score(y_true, y_pred)))
    section.add_metric("selection_rate", float(y_pred.mean()))
    section.add_metric("test_rows", len(y_true))
    if args.score:
        scores = pd.to_numeric(frame[args.score], errors="coerce")
        if scores.isna().any():
            raise AuditError(f"score column {args.score!r} has missing or non-numeric values")
        section.add_metric("roc_auc", float(roc_auc_score(y_true, scores)))
    return section


def _argv(args: argparse.Namespace) -> list[str]:
    """The options as given, for the report's command line (lists as the comma lists they were typed as)."""
    return [
        f"--{k.replace('_', '-')}={','.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if k not in ("cmd", "verbose") and v not in (None, False)
    ]
