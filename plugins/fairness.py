"""Fairness plugin: group metrics with bootstrap intervals, Kamiran-Calders reweighing, ThresholdOptimizer
post-processing (the section itself is built by ``fairness_sections``; ``audit decisions`` lives in ``decisions``)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from audit import AuditError, hookimpl
from audit.config import CliOption, Command, RunConfig
from audit.engine import DataUse, TrainingSetup
from audit.evaluation import EvalContext
from audit.report import MetricSpec, Section, Table
from audit_plugins.decisions import decisions_arguments, run_decisions
from audit_plugins.fairness_metrics import SUMMARIES, cell_counts, reweighing_weights
from audit_plugins.fairness_sections import (
    BOOTSTRAP,
    INTERSECTION,
    MIN_GROUP_SIZE,
    fairness_section,
    group_accuracy_section,
    group_labels,
)

log = logging.getLogger(__name__)
TAGS = ("EU AI Act Art. 10(2)(f)", "EU AI Act Art. 10(5)", "NIST AI RMF MEASURE 2.11")
SENSITIVE_ONLY_FLAGS = {
    "--postprocess": "postprocess",
    "--min-group-size": "min_group_size",
    "--fairness-bootstrap": "fairness_bootstrap",
    "--fairness-baseline": "fairness_baseline",
}


@hookimpl
def audit_cli_options() -> list[CliOption]:
    return [
        CliOption(
            ("--fairness",),
            dict(
                nargs="?",
                const="audit",
                choices=["audit", "reweight"],
                default=None,
                help="audit group fairness (on by default with --sensitive); 'reweight' also trains with Kamiran-Calders weights",
            ),
            commands=("train", "evaluate"),
        ),
        CliOption(
            ("--fairness-baseline",),
            dict(
                action="store_true",
                default=False,
                help="also train without mitigation and report both sets of fairness metrics",
            ),
            commands=("train",),
        ),
        CliOption(
            ("--postprocess",),
            dict(
                choices=["demographic_parity", "equalized_odds"],
                default=None,
                help="also report Fairlearn's ThresholdOptimizer fitted on the validation split",
            ),
        ),
        CliOption(
            ("--min-group-size",),
            dict(type=int, default=None, help=f"warn about groups smaller than this [{MIN_GROUP_SIZE}]"),
        ),
        CliOption(
            ("--fairness-bootstrap",),
            dict(type=int, default=None, help=f"bootstrap resamples for 95%% intervals [{BOOTSTRAP}]"),
        ),
        CliOption(
            ("--reweight-epsilon",),
            dict(
                type=float,
                default=None,
                help="privatise the reweighing counts with Laplace noise at this epsilon (for --dp runs)",
            ),
            commands=("train",),
        ),
    ]


def _active(config: RunConfig) -> bool:
    return bool(config.sensitive) or config.option("fairness") is not None


@hookimpl
def audit_configure(config: RunConfig) -> None:
    mode = config.option("fairness")
    if mode is not None and not config.sensitive:
        raise AuditError("--fairness needs --sensitive COLUMN[,COLUMN]: the groups to compare")
    if mode == "reweight" and config.command == "evaluate":
        raise AuditError(
            "--fairness reweight trains a model; use 'audit train' (evaluate audits fairness with --sensitive alone)"
        )
    if not config.sensitive:
        config.refuse_without("--sensitive COLUMN[,COLUMN]", SENSITIVE_ONLY_FLAGS)
    if config.option("fairness_baseline", False) and mode != "reweight":
        raise AuditError(
            "--fairness-baseline applies only with --fairness reweight: without a mitigation there is nothing to compare"
        )
    config.default_options({"min_group_size": MIN_GROUP_SIZE, "fairness_bootstrap": BOOTSTRAP})
    if config.option("min_group_size") < 1:
        raise AuditError(f"--min-group-size must be at least 1, got {config.option('min_group_size')}")
    if config.option("reweight_epsilon") is not None:
        if mode != "reweight":
            raise AuditError("--reweight-epsilon applies only with --fairness reweight")
        if not config.option("reweight_epsilon") > 0:
            raise AuditError(f"--reweight-epsilon must be positive, got {config.option('reweight_epsilon')}")
    if config.option("fairness_bootstrap") < 0:
        raise AuditError("--fairness-bootstrap must be 0 or more")


@hookimpl
def audit_prepare_training(setup: TrainingSetup) -> None:
    config = setup.config
    if config.option("fairness") != "reweight":
        return
    data = setup.dataset
    groups = group_labels(data.train.groups, data.sensitive)
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
    setup.artifacts["fairness"] = {
        "mitigation": "reweight",
        "weights_range": [float(weights.min()), float(weights.max())],
        "count_epsilon": epsilon,
    }


@hookimpl
def audit_checkpoint_metadata(setup: TrainingSetup) -> dict[str, Any] | None:
    info = setup.artifacts.get("fairness")
    return {"fairness": info} if info else None


class _TorchScorer(ClassifierMixin, BaseEstimator):
    """A fitted sklearn-style estimator over a torch model, for Fairlearn's ThresholdOptimizer(prefit=True)."""

    def __init__(self, model: torch.nn.Module, positive_index: int, device: torch.device) -> None:
        self.model, self.positive_index, self.device = model, positive_index, device
        self.classes_ = np.array([0, 1])

    def fit(self, X: Any, y: Any) -> _TorchScorer:
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        from audit.engine import predict_logits

        x = torch.as_tensor(np.asarray(X), dtype=torch.float32)
        p = (
            torch.softmax(predict_logits(self.model, x, self.device), 1)[:, self.positive_index]
            .double()
            .numpy()
        )
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
    optimizer = ThresholdOptimizer(
        estimator=scorer, constraints=constraint, prefit=True, predict_method="predict_proba"
    )
    try:
        optimizer.fit(
            flat(data.val.x),
            (data.val.y.numpy() == data.positive_index).astype(int),
            sensitive_features=group_labels(data.val.groups, columns),
        )
    except ValueError as exc:
        section.warnings.append(f"ThresholdOptimizer could not be fitted on {columns[0]}: {exc}")
        return
    y_post = optimizer.predict(
        flat(data.test.x), sensitive_features=group_labels(data.test.groups, columns), random_state=ctx.seed
    )
    post, _ = fairness_section(
        y_true, np.asarray(y_post), data.test.groups, columns, n_boot=0, seed=ctx.seed, min_group_size=0
    )
    section.add_metric("postprocessed.accuracy", float((y_post == y_true).mean()))
    rows = []
    for name, value in post.metrics.items():
        if name.split(".")[-1] in SUMMARIES and ".group." not in name:
            short = name[len("fairness.") :]
            section.add_metric(f"postprocessed.{short}", value)
            rows.append([short, section.metrics.get(name), value])
    section.tables.append(
        Table(
            f"ThresholdOptimizer ({constraint} on {columns[0]}, fitted on the validation split): before and after",
            ["metric", "model", "post-processed"],
            rows,
        )
    )


@hookimpl
def audit_evaluate(ctx: EvalContext) -> Section | None:
    config = ctx.config
    if not _active(config):
        return None
    labels = ctx.binary_labels()
    if labels is None:
        return group_accuracy_section(
            ctx.test_y.numpy(),
            ctx.test_pred.numpy(),
            ctx.dataset.test.groups,
            ctx.dataset.sensitive,
            num_classes=ctx.dataset.num_classes,
            min_group_size=config.option("min_group_size"),
        )
    y_true, y_pred = labels
    section, _ = fairness_section(
        y_true,
        y_pred,
        ctx.dataset.test.groups,
        ctx.dataset.sensitive,
        n_boot=config.option("fairness_bootstrap"),
        seed=ctx.seed,
        min_group_size=config.option("min_group_size"),
    )
    accuracy = float((y_true == y_pred).mean())
    mitigation = ctx.artifacts.get("fairness") or ctx.checkpoint_metadata.get("fairness")
    if mitigation and ctx.training is not None:
        _compare_baseline(ctx, section, y_true, accuracy, full=config.option("fairness_baseline", False))
    elif mitigation:
        section.notes.append(
            f"the model was trained with {mitigation.get('mitigation')} (from its checkpoint)"
        )
    if config.option("postprocess"):
        _postprocess(ctx, config.option("postprocess"), section, y_true)
    return section


def _compare_baseline(
    ctx: EvalContext, section: Section, y_true: np.ndarray, accuracy: float, *, full: bool
) -> None:
    info = ctx.artifacts["fairness"]
    pred = ctx.baseline()[1].numpy()
    y_base = (pred == ctx.dataset.positive_index).astype(int)
    base_acc = float((y_base == y_true).mean())
    section.add_metric("mitigation.accuracy", accuracy)
    section.add_metric("mitigation.baseline_accuracy", base_acc)
    section.add_metric("mitigation.accuracy_cost", base_acc - accuracy)
    section.notes.append(
        f"trained with Kamiran-Calders reweighing (weights {info['weights_range'][0]:.3f} to "
        f"{info['weights_range'][1]:.3f}); the same model without it (plain core, no other plugin) "
        f"scores {base_acc:.4f} against {accuracy:.4f}"
    )
    if info.get("count_epsilon") is None:
        section.notes.append(
            "the reweighing weights come from exact group counts of the training rows; under --dp that "
            "is a small leak outside the DP-SGD guarantee (see the privacy section)"
        )
    if full:
        base, _ = fairness_section(
            y_true,
            y_base,
            ctx.dataset.test.groups,
            ctx.dataset.sensitive,
            n_boot=0,
            seed=ctx.seed,
            min_group_size=0,
        )
        rows = []
        for name, value in base.metrics.items():
            if name.split(".")[-1] in SUMMARIES and ".group." not in name:
                short = name[len("fairness.") :]
                section.add_metric(f"baseline.{short}", value)
                rows.append([short, value, section.metrics.get(name)])
        section.tables.append(
            Table(
                "Without and with mitigation",
                ["metric", "without", "with reweighing"],
                [["accuracy", base_acc, accuracy]] + rows,
            )
        )


@hookimpl
def audit_metric_specs() -> list[MetricSpec]:
    lower = "lower is fairer"
    return [
        MetricSpec(
            "fairness.*.demographic_parity_difference",
            False,
            "rate",
            f"Max minus min selection rate across groups; {lower}",
            TAGS,
        ),
        MetricSpec(
            "fairness.*.demographic_parity_ratio",
            True,
            "ratio",
            "Min over max selection rate across groups",
            TAGS,
        ),
        MetricSpec(
            "fairness.*.equalized_odds_difference",
            False,
            "rate",
            f"Worst of the TPR and FPR gaps across groups; {lower}",
            TAGS,
        ),
        MetricSpec(
            "fairness.*.equalized_odds_ratio",
            True,
            "ratio",
            "Worst of the TPR and FPR ratios across groups",
            TAGS,
        ),
        MetricSpec("fairness.*.equal_opportunity_difference", False, "rate", "TPR gap across groups", TAGS),
        MetricSpec("fairness.*.worst_group_accuracy", True, "fraction", "Lowest accuracy of any group", TAGS),
        MetricSpec(
            "fairness.*.group.*",
            None,
            "rate",
            "Per-group size, base rate, selection rate, accuracy, TPR, FPR, FNR, precision",
            TAGS,
        ),
        MetricSpec(
            "fairness.mitigation.accuracy_cost",
            False,
            "fraction",
            "Accuracy lost to the fairness mitigation",
            TAGS,
        ),
        MetricSpec(
            "fairness.*.equal_opportunity_ratio", True, "ratio", "Min over max TPR across groups", TAGS
        ),
        MetricSpec(
            "fairness.*.accuracy_difference", False, "fraction", "Max minus min accuracy across groups", TAGS
        ),
        MetricSpec(
            "fairness.mitigation.accuracy", True, "fraction", "Test accuracy of the mitigated model", TAGS
        ),
        MetricSpec(
            "fairness.mitigation.baseline_accuracy",
            None,
            "fraction",
            "Test accuracy of the same model without the mitigation",
            TAGS,
        ),
        MetricSpec(
            "fairness.postprocessed.accuracy",
            True,
            "fraction",
            "Test accuracy after Fairlearn's ThresholdOptimizer (--postprocess)",
            TAGS,
        ),
    ]


@hookimpl
def audit_commands() -> list[Command]:
    return [
        Command(
            "decisions",
            "audit the fairness of decisions another system already made (no model)",
            decisions_arguments,
            run_decisions,
        )
    ]
