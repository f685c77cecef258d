"""What the core computes once for every plugin after training, and the core's own report sections."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, roc_auc_score
from torch import nn

from audit.config import RunConfig
from audit.data import Dataset
from audit.engine import TrainResult, predict_logits
from audit.report import Figure, MetricSpec, Section, Series, Table


@dataclass
class EvalContext:
    """Shared inputs for ``audit_evaluate``: computed once by the core, read by every plugin."""

    config: RunConfig
    dataset: Dataset
    model: nn.Module
    device: torch.device
    test_logits: torch.Tensor
    test_probs: torch.Tensor
    test_pred: torch.Tensor
    train_losses: torch.Tensor  # per-sample cross-entropy on the training rows (empty when unknown)
    heldout_losses: torch.Tensor  # per-sample cross-entropy on the test rows
    training: TrainResult | None = None
    artifacts: dict[str, Any] = field(default_factory=dict)
    checkpoint_metadata: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    _baseline: tuple[nn.Module, torch.Tensor] | None = field(default=None, repr=False)

    def baseline(self) -> tuple[nn.Module, torch.Tensor]:
        """The run's model trained again by the plain core (no plugin) and its test-row predictions.

        Every plugin that compares its mitigation with an unmitigated model gets this one: trained once per run.
        """
        if self._baseline is None:
            from audit.training import train_variant

            model, _ = train_variant(
                self.config, self.dataset, device=self.device, progress=not self.config.quiet
            )
            self._baseline = (model, predict_logits(model, self.dataset.test.x, self.device).argmax(1))
        return self._baseline

    @property
    def test_y(self) -> torch.Tensor:
        """True labels of the test rows."""
        return self.dataset.test.y

    @property
    def positive_scores(self) -> np.ndarray | None:
        """Probability of the positive class for a binary target, else None."""
        index = self.dataset.positive_index
        return None if index is None else self.test_probs[:, index].numpy()

    def binary_labels(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(y_true, y_pred) as 0/1 with 1 = positive class, for a binary target; else None."""
        index = self.dataset.positive_index
        if index is None:
            return None
        return (self.test_y.numpy() == index).astype(np.int64), (self.test_pred.numpy() == index).astype(
            np.int64
        )


def per_sample_losses(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Unweighted per-sample cross-entropy, in eval mode."""
    if len(y) == 0:
        return torch.zeros(0)
    return nn.functional.cross_entropy(predict_logits(model, x, device), y, reduction="none")


def build_context(
    *,
    config: RunConfig,
    dataset: Dataset,
    model: nn.Module,
    device: torch.device,
    training: TrainResult | None,
    artifacts: dict[str, Any],
    checkpoint_metadata: dict[str, Any],
) -> EvalContext:
    """Run the model once over the test and training rows and package what the plugins need."""
    logits = predict_logits(model, dataset.test.x, device)
    return EvalContext(
        config=config,
        dataset=dataset,
        model=model,
        device=device,
        test_logits=logits,
        test_probs=torch.softmax(logits, 1),
        test_pred=logits.argmax(1),
        train_losses=per_sample_losses(model, dataset.train.x, dataset.train.y, device),
        heldout_losses=nn.functional.cross_entropy(logits, dataset.test.y, reduction="none"),
        training=training,
        artifacts=artifacts,
        checkpoint_metadata=checkpoint_metadata,
        seed=config.seed,
    )


CORE_METRIC_SPECS = [
    MetricSpec(
        "performance.accuracy",
        True,
        "fraction",
        "Top-1 accuracy on the test split (exact 95% interval)",
        ("EU AI Act Art. 15",),
    ),
    MetricSpec(
        "performance.balanced_accuracy",
        True,
        "fraction",
        "Mean recall over classes on the test split",
        ("EU AI Act Art. 15",),
    ),
    MetricSpec(
        "performance.roc_auc",
        True,
        "fraction",
        "Area under the ROC curve (binary targets)",
        ("EU AI Act Art. 15",),
    ),
    MetricSpec(
        "performance.log_loss", False, "nats", "Mean cross-entropy on the test split", ("EU AI Act Art. 15",)
    ),
    MetricSpec("performance.test_rows", None, "rows", "Rows in the test split"),
    MetricSpec(
        "performance.selection_rate", None, "fraction", "Share of positive decisions (audit decisions)"
    ),
    MetricSpec(
        "efficiency.*",
        None,
        "various",
        "Training cost, memory, size and latency of the run",
        ("NIST AI RMF MEASURE 2.12",),
    ),
    MetricSpec(
        "efficiency.train_samples_per_s",
        True,
        "samples/s",
        "Training throughput",
        ("NIST AI RMF MEASURE 2.12",),
    ),
    MetricSpec("efficiency.train_wall_s", False, "s", "Wall time of training", ("NIST AI RMF MEASURE 2.12",)),
    MetricSpec(
        "efficiency.peak_rss_mb",
        False,
        "MiB",
        "Peak resident memory of the process",
        ("NIST AI RMF MEASURE 2.12",),
    ),
    MetricSpec(
        "efficiency.latency_ms_p50",
        False,
        "ms",
        "Median inference latency at batch 1",
        ("NIST AI RMF MEASURE 2.12",),
    ),
]


def performance_section(ctx: EvalContext) -> Section:
    """Accuracy, balanced accuracy, ROC AUC (binary), log loss, confusion matrix, training curves."""
    section = Section("performance", "Performance")
    y_true, y_pred = ctx.test_y.numpy(), ctx.test_pred.numpy()
    section.add_proportion("accuracy", int((y_true == y_pred).sum()), len(y_true))
    section.add_metric("balanced_accuracy", float(balanced_accuracy_score(y_true, y_pred)))
    section.add_metric("log_loss", float(ctx.heldout_losses.mean()))
    section.add_metric("test_rows", len(y_true))
    scores = ctx.positive_scores
    if scores is not None and len(np.unique(y_true)) == 2:
        section.add_metric("roc_auc", float(roc_auc_score(y_true == ctx.dataset.positive_index, scores)))
    labels = list(range(ctx.dataset.num_classes))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    section.tables.append(
        Table(
            "Confusion matrix (rows: true class, columns: predicted)",
            ["true \\ predicted"] + ctx.dataset.classes,
            [[name] + row.tolist() for name, row in zip(ctx.dataset.classes, matrix)],
        )
    )
    if ctx.training is not None:
        hist = ctx.training.history
        epochs = [h["epoch"] for h in hist]
        section.figures.append(
            Figure(
                "Loss per epoch",
                "line",
                "epoch",
                "cross-entropy",
                [
                    Series("train", epochs, [h["train_loss"] for h in hist]),
                    Series("validation", epochs, [h["val_loss"] for h in hist]),
                ],
            )
        )
        section.figures.append(
            Figure(
                "Validation accuracy per epoch",
                "line",
                "epoch",
                "accuracy",
                [Series("validation", epochs, [h["val_accuracy"] for h in hist])],
            )
        )
        columns = list(hist[0].keys()) if hist else []
        section.tables.append(Table("Training history", columns, [[h.get(c) for c in columns] for h in hist]))
        section.notes.append(
            f"kept the weights of epoch {ctx.training.best_epoch} of {len(hist)}"
            + (" (stopped early on the validation loss)" if ctx.training.stopped_early else "")
        )
        section.warnings.extend(ctx.training.warnings)
    section.notes.extend(ctx.dataset.notes)
    return section
