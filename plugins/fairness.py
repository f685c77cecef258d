"""Fairness plugin: group metrics with bootstrap intervals, Kamiran-Calders reweighing,
ThresholdOptimizer post-processing, and ``audit decisions`` for decisions made elsewhere."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from audit import AuditError, hookimpl
from audit.config import CliOption, Command, RunConfig
from audit.engine import DataUse, TrainingSetup
from audit.evaluation import EvalContext
from audit.report import Figure, MetricSpec, Section, Series, Table, metric_segment
from audit_plugins.fairness_metrics import RATES, SUMMARIES, GroupAudit, audit_groups, cell_counts, reweighing_weights

log = logging.getLogger(__name__)
TAGS = ("EU AI Act Art. 10(2)(f)", "EU AI Act Art. 10(5)", "NIST AI RMF MEASURE 2.11")
INTERSECTION = "&"
MIN_GROUP_SIZE, BOOTSTRAP = 30, 1000
SENSITIVE_ONLY_FLAGS = {"--postprocess": "postprocess", "--min-group-size": "min_group_size",
                        "--fairness-bootstrap": "fairness_bootstrap", "--fairness-baseline": "fairness_baseline"}


@hookimpl
def audit_cli_options() -> list[CliOption]:
    return [
        CliOption(("--fairness",), dict(nargs="?", const="audit", choices=["audit", "reweight"], default=None,
                                        help="audit group fairness (on by default with --sensitive); 'reweight' also trains with Kamiran-Calders weights"),
                  commands=("train", "evaluate")),
        CliOption(("--fairness-baseline",), dict(action="store_true", default=False,
                                                 help="also train without mitigation and report both sets of fairness metrics"), commands=("train",)),
        CliOption(("--postprocess",), dict(choices=["demographic_parity", "equalized_odds"], default=None,
                                           help="also report Fairlearn's ThresholdOptimizer fitted on the validation split")),
        CliOption(("--min-group-size",), dict(type=int, default=None, help=f"warn about groups smaller than this [{MIN_GROUP_SIZE}]")),
        CliOption(("--fairness-bootstrap",), dict(type=int, default=None, help=f"bootstrap resamples for 95%% intervals [{BOOTSTRAP}]")),
        CliOption(("--reweight-epsilon",), dict(type=float, default=None,
                                                help="privatise the reweighing counts with Laplace noise at this epsilon (for --dp runs)"),
                  commands=("train",)),
    ]


def _active(config: RunConfig) -> bool:
    return bool(config.sensitive) or config.option("fairness") is not None


@hookimpl
def audit_configure(config: RunConfig) -> None:
    mode = config.option("fairness")
    if mode is not None and not config.sensitive:
        raise AuditError("--fairness needs --sensitive COLUMN[,COLUMN]: the groups to compare")
    if mode == "reweight" and config.command == "evaluate":
        raise AuditError("--fairness reweight trains a model; use 'audit train' (evaluate audits fairness with --sensitive alone)")
    if not config.sensitive:
        config.refuse_without("--sensitive COLUMN[,COLUMN]", SENSITIVE_ONLY_FLAGS)
    if config.option("fairness_baseline", False) and mode != "reweight":
        raise AuditError("--fairness-baseline applies only with --fairness reweight: without a mitigation there is nothing to compare")
    for dest, value in (("min_group_size", MIN_GROUP_SIZE), ("fairness_bootstrap", BOOTSTRAP)):
        if config.option(dest) is None:
            config.options[dest] = value
    if config.option("min_group_size") < 1:
        raise AuditError(f"--min-group-size must be at least 1, got {config.option('min_group_size')}")
    if config.option("reweight_epsilon") is not None:
        if mode != "reweight":
            raise AuditError("--reweight-epsilon applies only with --fairness reweight")
        if not config.option("reweight_epsilon") > 0:
            raise AuditError(f"--reweight-epsilon must be positive, got {config.option('reweight_epsilon')}")
    if config.option("fairness_bootstrap") < 0:
        raise AuditError("--fairness-bootstrap must be 0 or more")


def _intersection(groups: pd.DataFrame, columns: list[str]) -> np.ndarray:
    return groups[columns].astype(str).agg(INTERSECTION.join, axis=1).to_numpy() if len(groups) else np.array([], dtype=str)


@hookimpl
def audit_prepare_training(setup: TrainingSetup) -> None:
    config = setup.config
    if config.option("fairness") != "reweight":
        return
    data = setup.dataset
    groups = _intersection(data.train.groups, data.sensitive)
    y = data.train.y.numpy()
    names, counts = cell_counts(y, groups)
    epsilon = config.option("reweight_epsilon")
    if epsilon is not None:
        rng = np.random.default_rng(config.seed + 7919)
        # One row changes one (group, class) cell by 1: L1 sensitivity 1, so Laplace(1/epsilon) is epsilon-DP.
        counts = np.maximum(counts + rng.laplace(scale=1.0 / epsilon, size=counts.shape), 1.0)
    weights = reweighing_weights(y, groups, cell_counts=counts)
    setup.sample_weights = torch.as_tensor(weights, dtype=torch.float32)
    what = f"Kamiran-Calders reweighing over {INTERSECTION.join(data.sensitive)} ({len(names)} groups)"
    setup.data_uses.append(DataUse("fairness reweighing counts", what, epsilon))
    setup.artifacts["fairness"] = {"mitigation": "reweight", "weights_range": [float(weights.min()), float(weights.max())],
                                   "count_epsilon": epsilon}


@hookimpl
def audit_checkpoint_metadata(setup: TrainingSetup) -> dict[str, Any] | None:
    info = setup.artifacts.get("fairness")
    return {"fairness": info} if info else None


def _features(sensitive: list[str]) -> list[tuple[str, list[str]]]:
    features = [(name, [name]) for name in sensitive]
    if len(sensitive) > 1:
        features.append((INTERSECTION.join(sensitive), list(sensitive)))
    return features


def _small_groups_warning(feature: str, sizes: dict[Any, int], min_group_size: int) -> str | None:
    """One warning per feature naming its groups with fewer than ``min_group_size`` audited rows (smallest first)."""
    small = sorted((size, str(group)) for group, size in sizes.items() if size < min_group_size)
    if not small:
        return None
    shown = ", ".join(f"'{group}' ({size})" for size, group in small[:8]) + (f" and {len(small) - 8} more" if len(small) > 8 else "")
    return (f"{feature}: {len(small)} group(s) have fewer than {min_group_size} audited rows, so their figures say little: "
            f"{shown}")


def _one_group_warning(feature: str, groups: Any, rows: int) -> str:
    # A gap over one group is 0 by arithmetic, not by fairness: the summaries are left out, so a gate on them fails closed.
    only = groups[0] if len(groups) else "-"
    return f"{feature}: only one group ('{only}') among the {rows} audited rows, so its fairness metrics compare nothing and are left out"


def group_accuracy_section(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame, sensitive: list[str], *,
                           num_classes: int, min_group_size: int) -> Section:
    """The fairness section for a multiclass target: accuracy per group (exact 95% intervals), the worst group, the gap."""
    section = Section("fairness", "Fairness")
    section.notes.append(f"selection, TPR and FPR gaps need a binary target; this target has {num_classes} classes, so the "
                         "section compares accuracy across groups (exact Clopper-Pearson 95% intervals)")
    correct = y_true == y_pred
    for feature, columns in _features(sensitive):
        labels = _intersection(groups, columns)
        names = sorted(set(labels))
        if len(names) < 2:
            section.warnings.append(_one_group_warning(feature, names, len(y_true)))
            continue
        prefix, rows, counts = metric_segment(feature), [], []
        for group in names:
            sel = labels == group
            hits, size = int(correct[sel].sum()), int(sel.sum())
            segment = f"{prefix}.group.{metric_segment(group)}"
            section.add_metric(f"{segment}.size", size)
            accuracy = section.add_proportion(f"{segment}.accuracy", hits, size)
            rows.append([group, size, accuracy, section.metrics[f"fairness.{segment}.accuracy.ci_low"],
                         section.metrics[f"fairness.{segment}.accuracy.ci_high"]])
            counts.append((accuracy, hits, size))
        small = _small_groups_warning(feature, {row[0]: row[1] for row in rows}, min_group_size)
        section.warnings += [small] if small else []
        worst = min(counts)
        section.add_proportion(f"{prefix}.worst_group_accuracy", worst[1], worst[2])
        section.add_metric(f"{prefix}.accuracy_difference", max(counts)[0] - worst[0])
        section.tables.append(Table(f"{feature}: accuracy per group", ["group", "size", "accuracy", "95% low", "95% high"], rows))
    return section


def fairness_section(y_true: np.ndarray, y_pred: np.ndarray, groups: pd.DataFrame, sensitive: list[str], *,
                     n_boot: int, seed: int, min_group_size: int) -> tuple[Section, dict[str, GroupAudit]]:
    """The fairness section for binary labels (1 = positive) and the sensitive features of the same rows."""
    section = Section("fairness", "Fairness")
    audits: dict[str, GroupAudit] = {}
    for feature, columns in _features(sensitive):
        audit = audit_groups(y_true, y_pred, _intersection(groups, columns), n_boot=n_boot, seed=seed)
        audits[feature] = audit
        prefix = metric_segment(feature)
        comparable = len(audit.groups) >= 2
        if not comparable:
            section.warnings.append(_one_group_warning(feature, audit.groups, len(y_true)))
        for name in SUMMARIES if comparable else ():
            section.add_metric(f"{prefix}.{name}", audit.summaries[name])
            if name in audit.summary_ci:
                section.add_metric(f"{prefix}.{name}.ci_low", audit.summary_ci[name][0])
                section.add_metric(f"{prefix}.{name}.ci_high", audit.summary_ci[name][1])
        rows = []
        for i, group in enumerate(audit.groups):
            segment = f"{prefix}.group.{metric_segment(group)}"
            section.add_metric(f"{segment}.size", int(audit.rates["size"][i]))
            row: list[Any] = [group, int(audit.rates["size"][i])]
            for rate in RATES:
                value = float(audit.rates[rate][i])
                section.add_metric(f"{segment}.{rate}", value)
                if rate in audit.rate_ci:
                    lo, hi = float(audit.rate_ci[rate][0][i]), float(audit.rate_ci[rate][1][i])
                    section.add_metric(f"{segment}.{rate}.ci_low", lo)
                    section.add_metric(f"{segment}.{rate}.ci_high", hi)
                    row.append(f"{value:.3f} [{lo:.3f}, {hi:.3f}]" if np.isfinite(value) else "—")
                else:
                    row.append(round(value, 4) if np.isfinite(value) else None)
            rows.append(row)
        small = _small_groups_warning(feature, {g: int(n) for g, n in zip(audit.groups, audit.rates["size"])}, min_group_size)
        section.warnings += [small] if small else []
        section.tables.append(Table(f"{feature}: per-group rates (95% bootstrap interval)", ["group", "size", *RATES], rows))
        if comparable:
            section.tables.append(Table(f"{feature}: summaries", ["metric", "value", "95% low", "95% high"],
                                        [[n, audit.summaries[n], *audit.summary_ci.get(n, (None, None))] for n in SUMMARIES]))
        bars = []
        for rate in ("selection_rate", "tpr", "fpr"):
            lo_hi = audit.rate_ci.get(rate)
            bars.append(Series(rate, list(audit.groups), [_f(v) for v in audit.rates[rate]],
                               [_f(v) for v in lo_hi[0]] if lo_hi else None, [_f(v) for v in lo_hi[1]] if lo_hi else None))
        section.figures.append(Figure(f"{feature}: rates per group (95% intervals)", "bar", feature, "rate", bars))
    section.notes.append(f"intervals: percentile bootstrap, {n_boot} multinomial resamples of the per-group confusion counts "
                         f"(equivalent to resampling rows), seed {seed}; definitions follow Fairlearn's")
    return section, audits


def _f(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


class _TorchScorer(ClassifierMixin, BaseEstimator):
    """A fitted sklearn-style estimator over a torch model, for Fairlearn's ThresholdOptimizer(prefit=True)."""

    def __init__(self, model: torch.nn.Module, positive_index: int, device: torch.device) -> None:
        self.model, self.positive_index, self.device = model, positive_index, device
        self.classes_ = np.array([0, 1])

    def fit(self, X: Any, y: Any) -> "_TorchScorer":
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        from audit.engine import predict_logits

        x = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        p = torch.softmax(predict_logits(self.model, x, self.device), 1)[:, self.positive_index].double().numpy()
        return np.stack([1 - p, p], axis=1)

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(int)

    def __sklearn_is_fitted__(self) -> bool:
        return True


def _postprocess(ctx: EvalContext, constraint: str, section: Section, y_true: np.ndarray) -> None:
    from fairlearn.postprocessing import ThresholdOptimizer

    data = ctx.dataset
    if len(data.val) == 0:
        section.notes.append("--postprocess skipped: no validation rows to fit the thresholds on")
        return
    columns = data.sensitive[:1]  # intersections leave groups too small for per-group ROC hulls
    scorer = _TorchScorer(ctx.model, data.positive_index, ctx.device)
    flat = lambda x: x.flatten(1).numpy().astype(np.float64)  # noqa: E731  (Fairlearn on pandas 3 rejects float32)
    optimizer = ThresholdOptimizer(estimator=scorer, constraints=constraint, prefit=True, predict_method="predict_proba")
    try:
        optimizer.fit(flat(data.val.x), (data.val.y.numpy() == data.positive_index).astype(int),
                      sensitive_features=_intersection(data.val.groups, columns))
    except ValueError as exc:
        section.warnings.append(f"ThresholdOptimizer could not be fitted on {columns[0]}: {exc}")
        return
    y_post = optimizer.predict(flat(data.test.x), sensitive_features=_intersection(data.test.groups, columns),
                               random_state=ctx.seed)
    post, _ = fairness_section(y_true, np.asarray(y_post), data.test.groups, columns, n_boot=0, seed=ctx.seed,
                               min_group_size=0)
    section.add_metric("postprocessed.accuracy", float((y_post == y_true).mean()))
    rows = []
    for name, value in post.metrics.items():
        if name.split(".")[-1] in SUMMARIES and ".group." not in name:
            short = name[len("fairness."):]
            section.add_metric(f"postprocessed.{short}", value)
            rows.append([short, section.metrics.get(name), value])
    section.tables.append(Table(f"ThresholdOptimizer ({constraint} on {columns[0]}, fitted on the validation split): before and after",
                                ["metric", "model", "post-processed"], rows))


@hookimpl
def audit_evaluate(ctx: EvalContext) -> Section | None:
    config = ctx.config
    if not _active(config):
        return None
    labels = ctx.binary_labels()
    if labels is None:
        return group_accuracy_section(ctx.test_y.numpy(), ctx.test_pred.numpy(), ctx.dataset.test.groups, ctx.dataset.sensitive,
                                      num_classes=ctx.dataset.num_classes, min_group_size=config.option("min_group_size"))
    y_true, y_pred = labels
    section, _ = fairness_section(y_true, y_pred, ctx.dataset.test.groups, ctx.dataset.sensitive,
                                  n_boot=config.option("fairness_bootstrap"), seed=ctx.seed,
                                  min_group_size=config.option("min_group_size"))
    accuracy = float((y_true == y_pred).mean())
    mitigation = ctx.artifacts.get("fairness") or ctx.checkpoint_metadata.get("fairness")
    if mitigation and ctx.training is not None:
        _compare_baseline(ctx, section, y_true, accuracy, full=config.option("fairness_baseline", False))
    elif mitigation:
        section.notes.append(f"the model was trained with {mitigation.get('mitigation')} (from its checkpoint)")
    if config.option("postprocess"):
        _postprocess(ctx, config.option("postprocess"), section, y_true)
    return section


def _compare_baseline(ctx: EvalContext, section: Section, y_true: np.ndarray, accuracy: float, *, full: bool) -> None:
    info = ctx.artifacts["fairness"]
    pred = ctx.baseline()[1].numpy()
    y_base = (pred == ctx.dataset.positive_index).astype(int)
    base_acc = float((y_base == y_true).mean())
    section.add_metric("mitigation.accuracy", accuracy)
    section.add_metric("mitigation.baseline_accuracy", base_acc)
    section.add_metric("mitigation.accuracy_cost", base_acc - accuracy)
    section.notes.append(f"trained with Kamiran-Calders reweighing (weights {info['weights_range'][0]:.3f} to "
                         f"{info['weights_range'][1]:.3f}); the same model without it (plain core, no other plugin) "
                         f"scores {base_acc:.4f} against {accuracy:.4f}")
    if info.get("count_epsilon") is None:
        section.notes.append("the reweighing weights come from exact group counts of the training rows; under --dp that "
                             "is a small leak outside the DP-SGD guarantee (see the privacy section)")
    if full:
        base, _ = fairness_section(y_true, y_base, ctx.dataset.test.groups, ctx.dataset.sensitive, n_boot=0,
                                   seed=ctx.seed, min_group_size=0)
        rows = []
        for name, value in base.metrics.items():
            if name.split(".")[-1] in SUMMARIES and ".group." not in name:
                short = name[len("fairness."):]
                section.add_metric(f"baseline.{short}", value)
                rows.append([short, value, section.metrics.get(name)])
        section.tables.append(Table("Without and with mitigation", ["metric", "without", "with reweighing"],
                                    [["accuracy", base_acc, accuracy]] + rows))


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    lower = "lower is fairer"
    return [
        MetricSpec("fairness.*.demographic_parity_difference", False, "rate", f"Max minus min selection rate across groups; {lower}", TAGS),
        MetricSpec("fairness.*.demographic_parity_ratio", True, "ratio", "Min over max selection rate across groups", TAGS),
        MetricSpec("fairness.*.equalized_odds_difference", False, "rate", f"Worst of the TPR and FPR gaps across groups; {lower}", TAGS),
        MetricSpec("fairness.*.equalized_odds_ratio", True, "ratio", "Worst of the TPR and FPR ratios across groups", TAGS),
        MetricSpec("fairness.*.equal_opportunity_difference", False, "rate", "TPR gap across groups", TAGS),
        MetricSpec("fairness.*.worst_group_accuracy", True, "fraction", "Lowest accuracy of any group", TAGS),
        MetricSpec("fairness.*.group.*", None, "rate", "Per-group size, base rate, selection rate, accuracy, TPR, FPR, FNR, precision", TAGS),
        MetricSpec("fairness.mitigation.accuracy_cost", False, "fraction", "Accuracy lost to the fairness mitigation", TAGS),
        MetricSpec("fairness.*.equal_opportunity_ratio", True, "ratio", "Min over max TPR across groups", TAGS),
        MetricSpec("fairness.*.accuracy_difference", False, "fraction", "Max minus min accuracy across groups", TAGS),
        MetricSpec("fairness.mitigation.accuracy", True, "fraction", "Test accuracy of the mitigated model", TAGS),
        MetricSpec("fairness.mitigation.baseline_accuracy", None, "fraction", "Test accuracy of the same model without the mitigation", TAGS),
        MetricSpec("fairness.postprocessed.accuracy", True, "fraction", "Test accuracy after Fairlearn's ThresholdOptimizer (--postprocess)", TAGS),
    ]


# --- audit decisions ----------------------------------------------------------------------


def _decisions_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="CSV or Parquet of recorded outcomes and decisions")
    parser.add_argument("--y-true", required=True, help="column of true outcomes")
    parser.add_argument("--y-pred", required=True, help="column of the decisions made")
    parser.add_argument("--score", help="column of scores (for ROC AUC)")
    parser.add_argument("--sensitive", required=True, help="comma-separated sensitive columns")
    parser.add_argument("--positive-label", help="the favourable value in y-true and y-pred [1, or the second sorted value]")
    parser.add_argument("--bootstrap", type=int, default=BOOTSTRAP, help=f"bootstrap resamples [{BOOTSTRAP}]")
    parser.add_argument("--min-group-size", type=int, default=MIN_GROUP_SIZE, help=f"warn about groups smaller than this [{MIN_GROUP_SIZE}]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/decisions", help="output folder [runs/decisions]")
    parser.add_argument("--policy", help="gate the report against this policy (exit 1 on failure)")


def _binary(column: pd.Series, positive: str, name: str, path: str) -> np.ndarray:
    if column.isna().any():
        raise AuditError(f"column {name!r} in {path} has {int(column.isna().sum())} missing value(s); expected every row filled")
    values = column.astype(str).str.strip()
    if values.nunique() > 2:
        raise AuditError(f"column {name!r} in {path} has {values.nunique()} distinct values; expected two (binary decisions)")
    return (values == positive).to_numpy().astype(np.int64)


def run_decisions(args: argparse.Namespace) -> int:
    """Audit decisions another system made: the same fairness section, no model."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    from audit.data import check_sensitive, group_frame, sensitive_bins, read_table
    from audit.report import Report
    from audit.plugins import get_plugin_manager
    from audit.runner import finalize_report, package_versions, write_outputs

    if args.bootstrap < 0:
        raise AuditError(f"--bootstrap must be 0 or more, got {args.bootstrap}")
    if args.min_group_size < 1:
        raise AuditError(f"--min-group-size must be at least 1, got {args.min_group_size}")
    frame, digest = read_table(args.data)
    sensitive = [c.strip() for c in args.sensitive.split(",") if c.strip()]
    for col in [args.y_true, args.y_pred] + ([args.score] if args.score else []):
        if col not in frame.columns:
            raise AuditError(f"{args.data} has no column {col!r}; columns are: {', '.join(map(str, frame.columns))}")
    check_sensitive(frame, sensitive, args.data)
    observed = sorted(set(frame[args.y_true].dropna().astype(str).str.strip()))
    positive = args.positive_label or ("1" if set(observed) <= {"0", "1"} else observed[-1])
    if positive not in observed:
        raise AuditError(f"--positive-label {positive!r} is not a value of {args.y_true!r}; expected one of {observed}")
    y_true = _binary(frame[args.y_true], positive, args.y_true, args.data)
    y_pred = _binary(frame[args.y_pred], positive, args.y_pred, args.data)
    groups = group_frame(frame, sensitive, sensitive_bins(frame, sensitive))
    report = Report(run={"name": Path(args.out).name, "command": "decisions", "command_line": " ".join(["audit", "decisions", *_argv(args)]),
                         "seed": args.seed, "device": "none", "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                         "versions": package_versions(),
                         "data": {"name": Path(args.data).stem, "source": args.data, "sha256": digest, "rows": len(frame), "target": args.y_true,
                                  "positive_label": positive, "sensitive": sensitive}})
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
    section, _ = fairness_section(y_true, y_pred, groups, sensitive, n_boot=args.bootstrap, seed=args.seed,
                                  min_group_size=args.min_group_size)
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
    return [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k not in ("cmd", "verbose") and v not in (None, False)]


@hookimpl
def audit_commands() -> list[Command]:
    return [Command("decisions", "audit the fairness of decisions another system already made (no model)",
                    _decisions_arguments, run_decisions)]
